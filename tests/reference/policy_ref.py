#!/usr/bin/python3
"""Independent float64 reference of sinkserve's KV cache policies (issue 4).

Written from the issue's specification, not from the C++ code, on top of the numpy
forward pass in llama_ref.py:

  * cells are kept in arrival order; keys are stored before RoPE (llama_ref.Cache);
  * a new token is appended as cell n (n = cells already cached): it attends to the
    cached cells at positions 0..n-1 and to itself at position n;
  * after every step the cache is trimmed to the policy's budget:
      full                  never trims;
      window(W)             the last W cells;
      streaming(S, W)       the first S cells + the last W;
      sirllm(S, E, W, d)    the first S + the E highest-scored cells among the rest
                            (ties: the older cell is kept) + the last W; a cell's score is
                            its surprisal -ln p(token | context) from the logits that
                            predicted it, +inf for the first cell of the session, 0 when
                            no predicting logits exist; every stored score is multiplied
                            by d at each round boundary;
      recompute(W)          the paper's baseline: each new token re-encodes the last W
                            tokens (the W-1 before it + itself) from scratch at positions
                            0..W-1, as the issue words it; only token ids are kept.

Two drivers:
  perplexity()  the exact semantics of `sinkserve perplexity` (StreamingLLM's
                eval_long_ppl.py): ids fed one at a time, nll[i] = -ln p(ids[i+1]) from
                the logits after feeding ids[i], trim after each step, SirLLM decay just
                before feeding ids[i] when i > 0 and i % round_tokens == 0;
  greedy()      argmax generation after a prompt, trim after each step.

Usage (run with /usr/bin/python3):
  policy_ref.py perplexity --model M.gguf --ids "1 403 ..." --policy "streaming(4,20)" \
      [--round-tokens R]
  policy_ref.py greedy --model M.gguf --prompt-ids "1" --n 200 --policy "window(24)"
"""

import argparse
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import llama_ref  # noqa: E402

KINDS = ("full", "window", "streaming", "sirllm", "recompute")


# ------------------------------------------------------------------------------------
# Policy configuration
# ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Policy:
    kind: str = "full"
    sinks: int = 0
    window: int = 0
    entropy: int = 0
    decay: float = 1.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown policy {self.kind!r} (known: {KINDS})")
        if self.kind != "full" and self.window < 1:
            raise ValueError(f"{self.kind}: window must be >= 1")
        if min(self.sinks, self.entropy) < 0:
            raise ValueError("sinks and entropy must be >= 0")
        if not 0.0 < self.decay <= 1.0:
            raise ValueError("decay must be in (0, 1]")

    @staticmethod
    def full() -> "Policy":
        return Policy("full")

    @staticmethod
    def window_(w: int) -> "Policy":
        return Policy("window", window=w)

    @staticmethod
    def streaming(s: int, w: int) -> "Policy":
        return Policy("streaming", sinks=s, window=w)

    @staticmethod
    def sirllm(s: int, e: int, w: int, decay: float = 1.0) -> "Policy":
        return Policy("sirllm", sinks=s, window=w, entropy=e, decay=decay)

    @staticmethod
    def recompute(w: int) -> "Policy":
        return Policy("recompute", window=w)

    @staticmethod
    def parse(spec: str) -> "Policy":
        """"full", "window(24)", "streaming(4,20)", "sirllm(4,8,12[,0.9])", "recompute(16)"."""
        m = re.fullmatch(r"\s*([a-z]+)\s*(?:\(([^)]*)\))?\s*", spec)
        if not m:
            raise ValueError(f"bad policy spec {spec!r}")
        kind, args = m.group(1), m.group(2)
        vals = [a.strip() for a in args.split(",")] if args else []
        want = {"full": 0, "window": 1, "streaming": 2, "sirllm": (3, 4), "recompute": 1}
        n_ok = want.get(kind)
        if n_ok is None or len(vals) not in (n_ok if isinstance(n_ok, tuple) else (n_ok,)):
            raise ValueError(f"bad policy spec {spec!r}")
        if kind == "full":
            return Policy.full()
        if kind == "window":
            return Policy.window_(int(vals[0]))
        if kind == "streaming":
            return Policy.streaming(int(vals[0]), int(vals[1]))
        if kind == "recompute":
            return Policy.recompute(int(vals[0]))
        return Policy.sirllm(int(vals[0]), int(vals[1]), int(vals[2]),
                             float(vals[3]) if len(vals) == 4 else 1.0)

    def budget(self) -> Optional[int]:
        """Cells left after a trim; None = unbounded."""
        return {"full": None, "window": self.window, "streaming": self.sinks + self.window,
                "sirllm": self.sinks + self.entropy + self.window,
                "recompute": self.window}[self.kind]

    def __str__(self) -> str:
        if self.kind == "full":
            return "full"
        if self.kind in ("window", "recompute"):
            return f"{self.kind}({self.window})"
        if self.kind == "streaming":
            return f"streaming({self.sinks},{self.window})"
        return f"sirllm({self.sinks},{self.entropy},{self.window},{self.decay:g})"


# ------------------------------------------------------------------------------------
# The policy as a pure function of cell metadata
# ------------------------------------------------------------------------------------

def select_kept(scores: Sequence[float], policy: Policy) -> List[int]:
    """Indices (ascending, i.e. arrival order) of the cells to keep. Only SirLLM reads
    the scores; the others need only the number of cells."""
    n = len(scores)
    budget = policy.budget()
    if budget is None or n <= budget:
        return list(range(n))
    if policy.kind in ("window", "recompute"):
        return list(range(n - policy.window, n))
    if policy.kind == "streaming":
        return list(range(policy.sinks)) + list(range(n - policy.window, n))
    # sirllm: the middle region is everything between the sinks and the window.
    s, e, w = policy.sinks, policy.entropy, policy.window
    middle = range(s, n - w)
    # Highest score first; equal scores: the older (lower index) first.
    ranked = sorted(middle, key=lambda i: (-scores[i], i))
    return list(range(s)) + sorted(ranked[:e]) + list(range(n - w, n))


def selection_margin(scores: Sequence[float], policy: Policy) -> float:
    """For a SirLLM trim that evicts from the middle: the gap, in nats, between the
    lowest kept and the highest evicted middle score (inf when no choice is made). A
    float32 implementation computes scores a few 1e-6 nats off, so it may legitimately
    order two scores that close differently; a caller comparing against one checks
    that the gap is well above that."""
    n = len(scores)
    if policy.kind != "sirllm" or n <= policy.budget() or policy.entropy == 0:
        return math.inf
    s, e, w = policy.sinks, policy.entropy, policy.window
    mid = sorted((scores[i] for i in range(s, n - w)), reverse=True)
    if len(mid) <= e or math.isinf(mid[e - 1]):
        return math.inf
    return mid[e - 1] - mid[e]


@dataclass
class CellTable:
    """Cell metadata in logical (arrival) order: what a policy sees."""
    tokens: List[int] = field(default_factory=list)
    scores: List[float] = field(default_factory=list)
    arrivals: List[int] = field(default_factory=list)
    next_arrival: int = 0

    def __len__(self) -> int:
        return len(self.tokens)

    def append(self, token: int, score: float) -> None:
        self.tokens.append(int(token))
        self.scores.append(float(score))
        self.arrivals.append(self.next_arrival)
        self.next_arrival += 1

    def decay(self, factor: float) -> None:
        # inf * factor stays inf: the first cell is never dropped.
        self.scores = [s * factor for s in self.scores]

    def keep(self, indices: Sequence[int]) -> None:
        self.tokens = [self.tokens[i] for i in indices]
        self.scores = [self.scores[i] for i in indices]
        self.arrivals = [self.arrivals[i] for i in indices]


def surprisal(logits: np.ndarray, token: int) -> float:
    """-ln softmax(logits)[token], in float64."""
    m = float(np.max(logits))
    return float(m + np.log(np.sum(np.exp(logits - m))) - logits[token])


# ------------------------------------------------------------------------------------
# A session: model + cache + policy
# ------------------------------------------------------------------------------------

class PolicySession:
    """Feeds tokens through llama_ref.Model under a policy.

    `last_logits` are the logits that predict the next token; they give its score.
    `trace` records, after every trim, the arrival indices of the kept cells, and
    `min_margin` the closest SirLLM choice seen (see selection_margin).
    """

    def __init__(self, model: llama_ref.Model, policy: Policy):
        self.model = model
        self.policy = policy
        self.cache = model.new_cache()
        self.cells = CellTable()
        self.last_logits: Optional[np.ndarray] = None
        self.trace: List[List[int]] = []
        self.min_margin = math.inf

    def _score(self, token: int, predicting: Optional[np.ndarray]) -> float:
        if self.cells.next_arrival == 0:
            return math.inf           # first cell of the session (BOS)
        if predicting is None:
            return 0.0
        return surprisal(predicting, token)

    def _logits_for(self, tokens: List[int]) -> np.ndarray:
        """Append `tokens` as cells and return their logits (n, vocab)."""
        if self.policy.kind == "recompute":
            # Re-encode the last W tokens, the new one included, from scratch at
            # positions 0..W-1. K/V is rebuilt every time; only the ids are kept.
            w = self.policy.window
            if len(tokens) > 1 and len(self.cells) + len(tokens) > w:
                raise ValueError("recompute: a batch must fit in the window")
            history = self.cells.tokens[max(0, len(self.cells) - (w - 1)):] if w > 1 else []
            fresh = self.model.new_cache()
            logits = self.model.forward_batch(history + tokens, fresh)
            return logits[len(history):]
        return self.model.forward_batch(tokens, self.cache)

    def feed(self, tokens: Sequence[int]) -> np.ndarray:
        """Feed tokens as one batch, then trim once. Equivalent to feeding them one at a
        time only while no trim would have happened in between (the caller checks).
        Returns logits (n, vocab)."""
        tokens = [int(t) for t in tokens]
        logits = self._logits_for(tokens)
        prev = self.last_logits
        for j, t in enumerate(tokens):
            self.cells.append(t, self._score(t, prev))
            prev = logits[j]
        self.last_logits = logits[-1]
        self.trim()
        return logits

    def step(self, token: int) -> np.ndarray:
        """One token: append, attend over the cache and itself, trim. Logits (vocab,)."""
        return self.feed([token])[0]

    def trim(self) -> None:
        self.min_margin = min(self.min_margin, selection_margin(self.cells.scores, self.policy))
        keep = select_kept(self.cells.scores, self.policy)
        if len(keep) != len(self.cells):
            if self.policy.kind != "recompute":
                self.cache.evict(keep)
            self.cells.keep(keep)
        self.trace.append(list(self.cells.arrivals))

    def decay(self) -> None:
        """A round boundary."""
        if self.policy.kind == "sirllm":
            self.cells.decay(self.policy.decay)

    def prefill(self, prompt: Sequence[int]) -> np.ndarray:
        """Feed a prompt; logits (n, vocab). One batch while that equals feeding the
        prompt token by token (no trim inside it); token by token otherwise (the
        reference's definition; a chunked implementation may differ on long prompts)."""
        budget = self.policy.budget()
        if self.policy.kind == "recompute":
            budget -= 1  # the new token is one of the W re-encoded ones
        if budget is None or len(self.cells) + len(prompt) - 1 <= budget:
            return self.feed(prompt)
        return np.stack([self.step(t) for t in prompt])


# ------------------------------------------------------------------------------------
# Drivers
# ------------------------------------------------------------------------------------

@dataclass
class PerplexityResult:
    nll: np.ndarray                # (n_ids - 1,) nll[i] = -ln p(ids[i+1]) after ids[i]
    kept: List[List[int]]          # arrival indices kept after feeding ids[i]
    min_margin: float              # closest SirLLM selection (nats)


def perplexity(model: llama_ref.Model, ids: Sequence[int], policy: Policy,
               round_tokens: int = 0) -> PerplexityResult:
    """`sinkserve perplexity` semantics on ids that already start with BOS."""
    sess = PolicySession(model, policy)
    n = len(ids) - 1
    nll = np.zeros(max(n, 0))
    for i in range(n):
        if round_tokens > 0 and i > 0 and i % round_tokens == 0:
            sess.decay()
        logits = sess.step(ids[i])
        nll[i] = surprisal(logits, int(ids[i + 1]))
    return PerplexityResult(nll, sess.trace, sess.min_margin)


@dataclass
class GreedyResult:
    ids: List[int]                 # generated ids (prompt excluded)
    min_gap: float                 # smallest top-1 minus top-2 logit among the choices
    min_margin: float              # closest SirLLM selection (nats)


def greedy(model: llama_ref.Model, prompt: Sequence[int], n: int,
           policy: Policy) -> GreedyResult:
    """n argmax tokens after the prompt (never stops early; ties: lowest id)."""
    sess = PolicySession(model, policy)
    logits = sess.prefill(prompt)[-1]
    out, min_gap = [], math.inf
    for i in range(n):
        top2 = np.sort(logits)[-2:]
        min_gap = min(min_gap, float(top2[1] - top2[0]))
        t = int(np.argmax(logits))
        out.append(t)
        if i + 1 < n:
            logits = sess.step(t)
    return GreedyResult(out, min_gap, sess.min_margin)


# ------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------

def _parse_ids(s: str) -> List[int]:
    return [int(t) for t in s.replace(",", " ").split()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("perplexity", help="index,token,target,nll CSV on stdout")
    p.add_argument("--model", required=True)
    p.add_argument("--ids", required=True, help="ids including the leading BOS")
    p.add_argument("--policy", default="full")
    p.add_argument("--round-tokens", type=int, default=0)
    p = sub.add_parser("greedy", help="generated ids on one line")
    p.add_argument("--model", required=True)
    p.add_argument("--prompt-ids", required=True)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--policy", default="full")
    args = ap.parse_args(argv)

    model = llama_ref.Model(args.model)
    policy = Policy.parse(args.policy)
    if args.cmd == "perplexity":
        ids = _parse_ids(args.ids)
        res = perplexity(model, ids, policy, args.round_tokens)
        print("index,token,target,nll")
        for i, v in enumerate(res.nll):
            print(f"{i},{ids[i]},{ids[i + 1]},{v:.9g}")
        print(f"ppl={math.exp(float(np.mean(res.nll))):.6f} min_margin={res.min_margin:.3g}",
              file=sys.stderr)
    else:
        res = greedy(model, _parse_ids(args.prompt_ids), args.n, policy)
        print(" ".join(map(str, res.ids)))
        print(f"min_gap={res.min_gap:.3g} min_margin={res.min_margin:.3g}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
