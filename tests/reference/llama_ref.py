#!/usr/bin/python3
"""Independent float64 numpy reference of the llama-family forward pass.

Supports architectures `llama` (adjacent-pair RoPE) and `qwen2` (NeoX rotate-half RoPE,
Q/K/V biases). Written from the model definitions, not from the C++ code, so that the
C++ decoder's logits can be checked against it.

The KV cache follows sinkserve's design (DESIGN.md, "Positions live in the cache"):
  * keys are stored BEFORE RoPE;
  * a cell's RoPE position is its index in the cache's logical order;
  * eviction removes cells and the survivors are re-indexed, so their positions change;
    keys are rotated on the fly at attention time with the current positions.
A new token's query position is the index its cell gets, i.e. the number of cells
already in the cache.

Usage (run with /usr/bin/python3, which has numpy):
  llama_ref.py logits --model M.gguf --tokens "1 2 3" [--out logits.npy]
  llama_ref.py greedy --model M.gguf --n 200 [--prompt-ids "1"]
  llama_ref.py decode --model M.gguf --ids "1 403 ..."
"""

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

# Allow `python3 tests/reference/llama_ref.py` from anywhere.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gguf_py  # noqa: E402
from act_quant import quantize_marking_ties  # noqa: E402
from dequant import dequantize  # noqa: E402

SUPPORTED_ARCHS = ("llama", "qwen2")


# ------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------

@dataclass
class Config:
    arch: str
    dim: int            # embedding length
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab_size: int
    rms_eps: float
    rope_base: float
    rope_freq_scale: float  # 1 / linear scaling factor (1.0 = no scaling)
    n_rot: int              # number of leading head dims that RoPE rotates
    rope_neox: bool         # True: rotate halves (x[i], x[i+n_rot/2]); False: adjacent pairs
    context_length: int
    bos_id: Optional[int]
    eos_id: Optional[int]

    @staticmethod
    def from_gguf(g: gguf_py.GGUFFile) -> "Config":
        arch = g.get("general.architecture")
        if arch not in SUPPORTED_ARCHS:
            raise ValueError(f"unsupported architecture {arch!r} (supported: {SUPPORTED_ARCHS})")

        def req(key):
            v = g.get(f"{arch}.{key}")
            if v is None:
                raise ValueError(f"missing metadata {arch}.{key}")
            return v

        dim = int(req("embedding_length"))
        n_heads = int(req("attention.head_count"))
        # head_count_kv absent means plain multi-head attention.
        n_kv_heads = int(g.get(f"{arch}.attention.head_count_kv", n_heads))
        head_dim = int(g.get(f"{arch}.attention.key_length", dim // n_heads))
        if n_heads % n_kv_heads:
            raise ValueError(f"head_count {n_heads} not a multiple of head_count_kv {n_kv_heads}")

        # Linear RoPE scaling divides the position by the factor. Older files wrote the
        # factor as {arch}.rope.scale_linear instead of scaling.type/factor.
        freq_scale = 1.0
        stype = g.get(f"{arch}.rope.scaling.type")
        if stype == "linear":
            freq_scale = 1.0 / float(req("rope.scaling.factor"))
        elif stype not in (None, "none"):
            raise ValueError(f"unsupported rope scaling type {stype!r}")
        elif g.get(f"{arch}.rope.scale_linear") is not None:
            freq_scale = 1.0 / float(g.get(f"{arch}.rope.scale_linear"))

        n_rot = int(g.get(f"{arch}.rope.dimension_count", head_dim))
        if n_rot % 2 or n_rot > head_dim:
            raise ValueError(f"rope.dimension_count {n_rot} invalid for head_dim {head_dim}")

        tok_embd = g.tensor("token_embd.weight")
        return Config(
            arch=arch,
            dim=dim,
            n_layers=int(req("block_count")),
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=head_dim,
            ffn_dim=int(req("feed_forward_length")),
            vocab_size=int(tok_embd.dims[1]),
            # The eps is stored as float32 (1e-5 reads back as 9.99999974e-06); use
            # the stored value, as a real loader would.
            rms_eps=float(req("attention.layer_norm_rms_epsilon")),
            rope_base=float(g.get(f"{arch}.rope.freq_base", 10000.0)),
            rope_freq_scale=freq_scale,
            n_rot=n_rot,
            rope_neox=(arch == "qwen2"),
            context_length=int(g.get(f"{arch}.context_length", 0)),
            bos_id=g.get("tokenizer.ggml.bos_token_id"),
            eos_id=g.get("tokenizer.ggml.eos_token_id"),
        )


# ------------------------------------------------------------------------------------
# KV cache
# ------------------------------------------------------------------------------------

class Cache:
    """KV cache: per layer, pre-RoPE keys and values of each cell, plus cell token ids.

    Storage per layer is a numpy buffer with spare capacity (doubling), so appending a
    token is O(1) amortized instead of re-stacking every row each step; the live part
    is `k[layer][:n_cells]`.

    pos_offset: added to every RoPE position (cells and queries). Always 0 in normal
    use; tests set it to check that RoPE attention depends only on relative positions.
    """

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, pos_offset: int = 0):
        self.n_layers = n_layers
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.pos_offset = pos_offset
        self.tokens: List[int] = []     # token id of each cell, in logical order
        self._cap = 0
        self._k = [np.zeros((0, n_kv_heads, head_dim)) for _ in range(n_layers)]  # (cap, n_kv_heads, head_dim)
        self._v = [np.zeros((0, n_kv_heads, head_dim)) for _ in range(n_layers)]  # (cap, n_kv_heads, head_dim)

    @classmethod
    def for_config(cls, cfg: Config, pos_offset: int = 0) -> "Cache":
        return cls(cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, pos_offset)

    @property
    def n_cells(self) -> int:
        return len(self.tokens)

    def __len__(self) -> int:
        return self.n_cells

    def keys(self, layer: int) -> np.ndarray:
        """Pre-RoPE keys, (n_cells, n_kv_heads, head_dim) view."""
        return self._k[layer][: self.n_cells]

    def values(self, layer: int) -> np.ndarray:
        """(n_cells, n_kv_heads, head_dim) view."""
        return self._v[layer][: self.n_cells]

    def positions(self) -> np.ndarray:
        """RoPE position of each cell: its index (+ pos_offset). (n_cells,)"""
        return np.arange(self.n_cells, dtype=np.float64) + self.pos_offset

    def _reserve(self, n_total: int) -> None:
        if n_total <= self._cap:
            return
        cap = max(n_total, 2 * self._cap, 16)
        for layer in range(self.n_layers):
            for bufs in (self._k, self._v):
                new = np.zeros((cap, self.n_kv_heads, self.head_dim))
                new[: self.n_cells] = bufs[layer][: self.n_cells]
                bufs[layer] = new
        self._cap = cap

    def append_cells(self, tokens: Sequence[int]) -> int:
        """Add len(tokens) empty cells at the end; returns the index of the first one.
        The forward pass fills their K/V layer by layer via set_kv."""
        start = self.n_cells
        self._reserve(start + len(tokens))
        self.tokens.extend(int(t) for t in tokens)
        return start

    def set_kv(self, layer: int, start: int, k: np.ndarray, v: np.ndarray) -> None:
        """k, v: (n_new, n_kv_heads, head_dim), pre-RoPE."""
        self._k[layer][start: start + len(k)] = k
        self._v[layer][start: start + len(v)] = v

    def evict(self, keep_indices: Sequence[int]) -> None:
        """Keep only the listed cells, in the listed order; they become cells 0..m-1 and
        so take positions 0..m-1 from now on (no re-rotation: keys are pre-RoPE)."""
        keep = np.asarray(list(keep_indices), dtype=np.int64)
        if keep.size and (keep.min() < 0 or keep.max() >= self.n_cells):
            raise IndexError(f"evict: index out of range for {self.n_cells} cells")
        if len(np.unique(keep)) != keep.size:
            raise ValueError("evict: duplicate indices")
        for layer in range(self.n_layers):
            # Fancy indexing copies first, so overlapping source/destination is safe.
            self._k[layer][: keep.size] = self._k[layer][keep]
            self._v[layer][: keep.size] = self._v[layer][keep]
        self.tokens = [self.tokens[i] for i in keep]

    def copy(self) -> "Cache":
        c = Cache(self.n_layers, self.n_kv_heads, self.head_dim, self.pos_offset)
        c.tokens = list(self.tokens)
        c._cap = self._cap
        c._k = [k.copy() for k in self._k]
        c._v = [v.copy() for v in self._v]
        return c


def streaming_keep(n_cells: int, n_sink: int, window: int) -> List[int]:
    """StreamingLLM policy example: the first n_sink cells plus the last `window` cells."""
    if n_cells <= n_sink + window:
        return list(range(n_cells))
    return list(range(n_sink)) + list(range(n_cells - window, n_cells))


# ------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------

def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x: (n, dim), w: (dim,)."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def rope_tables(positions: np.ndarray, cfg: Config):
    """cos/sin of theta[p, i] = pos_p * freq_scale * base^(-2i/n_rot), i < n_rot/2.
    positions: (n,) -> cos, sin: (n, n_rot/2)."""
    i = np.arange(cfg.n_rot // 2, dtype=np.float64)
    inv_freq = cfg.rope_base ** (-2.0 * i / cfg.n_rot)  # (n_rot/2,)
    theta = (positions * cfg.rope_freq_scale)[:, None] * inv_freq[None, :]  # (n, n_rot/2)
    return np.cos(theta), np.sin(theta)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, cfg: Config) -> np.ndarray:
    """Rotate the first n_rot dims of every head. x: (n, heads, head_dim); cos/sin (n, n_rot/2).

    llama: pairs (x[2i], x[2i+1]) -- the GGUF converter permutes Q/K rows of HF llama
           checkpoints so that llama.cpp's "normal" mode applies.
    qwen2: pairs (x[i], x[i + n_rot/2]) -- NeoX / HF rotate_half, no permutation.
    """
    out = x.copy()
    half = cfg.n_rot // 2
    c = cos[:, None, :]  # (n, 1, n_rot/2), broadcast over heads
    s = sin[:, None, :]
    if cfg.rope_neox:
        x0 = x[..., :half]
        x1 = x[..., half: cfg.n_rot]
        out[..., :half] = x0 * c - x1 * s
        out[..., half: cfg.n_rot] = x0 * s + x1 * c
    else:
        x0 = x[..., 0: cfg.n_rot: 2]
        x1 = x[..., 1: cfg.n_rot: 2]
        out[..., 0: cfg.n_rot: 2] = x0 * c - x1 * s
        out[..., 1: cfg.n_rot: 2] = x0 * s + x1 * c
    return out


def attention_scores(q: np.ndarray, q_pos: np.ndarray, k: np.ndarray, k_pos: np.ndarray,
                     cfg: Config) -> np.ndarray:
    """Scaled pre-softmax scores with RoPE applied on the fly.

    q: (n_q, n_heads, head_dim) pre-RoPE; k: (n_k, n_kv_heads, head_dim) pre-RoPE;
    q_pos: (n_q,), k_pos: (n_k,) -> (n_heads, n_q, n_k).
    """
    qr = apply_rope(q, *rope_tables(q_pos, cfg), cfg)  # (n_q, n_heads, head_dim)
    kr = apply_rope(k, *rope_tables(k_pos, cfg), cfg)  # (n_k, n_kv_heads, head_dim)
    # Grouped-query attention: query head h reads KV head h // group (consecutive query
    # heads share a KV head, as in HF repeat_kv and ggml's broadcasting).
    group = cfg.n_heads // cfg.n_kv_heads
    kr = np.repeat(kr, group, axis=1)  # (n_k, n_heads, head_dim)
    return np.einsum("qhd,khd->hqk", qr, kr) / np.sqrt(cfg.head_dim)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(x)
    return e / np.sum(e, axis=axis, keepdims=True)


# ------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------

class Model:
    """Weights dequantized once to float64. A GGUF matrix with ggml shape {in, out} is a
    numpy (out, in) matrix W, and y = W @ x (done as x @ W.T for a batch of rows).

    act_quant=True emulates ggml's quantization of the activations that multiply a
    quantized weight (Q8_0 / Q8_K per row, see act_quant.py), as ggml's and
    sinkserve's integer kernels do; the default is the exact product with the
    dequantized weights."""

    def __init__(self, path: str, act_quant: bool = False):
        self.gguf = gguf_py.load(path)
        g = self.gguf
        self.cfg = cfg = Config.from_gguf(g)
        self.act_quant = act_quant
        self.tie_rows = np.zeros(0, dtype=bool)              # of the last forward_batch
        self.weight_types = {}                               # tensor name -> type name

        def w(name: str, shape=None) -> np.ndarray:
            self.weight_types[name] = g.tensor(name).type_name
            t = dequantize(g.tensor(name))
            if shape is not None and t.shape != shape:
                raise ValueError(f"{name}: numpy shape {t.shape}, expected {shape}")
            return t

        def opt(name: str, shape=None) -> Optional[np.ndarray]:
            return w(name, shape) if name in g else None

        d, hd, kvd = cfg.dim, cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        self.tok_embd = w("token_embd.weight", (cfg.vocab_size, d))       # (vocab, dim)
        self.output_norm = w("output_norm.weight", (d,))                   # (dim,)
        # Tied embeddings: no output.weight, the embedding matrix doubles as the head.
        self.tied = "output.weight" not in g
        self.output = self.tok_embd if self.tied else w("output.weight", (cfg.vocab_size, d))  # (vocab, dim)

        self.output_type = self.weight_types[
            "token_embd.weight" if self.tied else "output.weight"]

        self.layers = []
        for i in range(cfg.n_layers):
            p = f"blk.{i}."
            self.layers.append(dict(
                attn_norm=w(p + "attn_norm.weight", (d,)),                   # (dim,)
                wq=w(p + "attn_q.weight", (cfg.n_heads * hd, d)),  # (n_heads*hd, dim)
                wk=w(p + "attn_k.weight", (kvd, d)),  # (n_kv*hd, dim)
                wv=w(p + "attn_v.weight", (kvd, d)),  # (n_kv*hd, dim)
                bq=opt(p + "attn_q.bias", (cfg.n_heads * hd,)),              # qwen2 only
                bk=opt(p + "attn_k.bias", (kvd,)),
                bv=opt(p + "attn_v.bias", (kvd,)),
                wo=w(p + "attn_output.weight", (d, cfg.n_heads * hd)),       # (dim, n_heads*hd)
                ffn_norm=w(p + "ffn_norm.weight", (d,)),                     # (dim,)
                w_gate=w(p + "ffn_gate.weight", (cfg.ffn_dim, d)),           # (ffn, dim)
                w_up=w(p + "ffn_up.weight", (cfg.ffn_dim, d)),               # (ffn, dim)
                w_down=w(p + "ffn_down.weight", (d, cfg.ffn_dim)),           # (dim, ffn)
            ))
            self.layers[-1]["types"] = {key: self.weight_types[p + name] for key, name in (
                ("wq", "attn_q.weight"), ("wk", "attn_k.weight"), ("wv", "attn_v.weight"),
                ("wo", "attn_output.weight"), ("w_gate", "ffn_gate.weight"),
                ("w_up", "ffn_up.weight"), ("w_down", "ffn_down.weight"))}

    def matmul(self, x: np.ndarray, W: np.ndarray, weight_type: str,
               feeds_cache: bool = False) -> np.ndarray:
        """x (n, in) @ W.T (in, out), with x quantized as the kernels for weight_type
        quantize it when act_quant is on. Rows whose quantization sits on a rounding
        tie are marked in tie_rows; for a product that is cached (K, V), the rows
        after it too, since they attend to it."""
        if self.act_quant:
            x, ties = quantize_marking_ties(x, weight_type)
            if feeds_cache and ties.any():
                ties[int(np.argmax(ties)):] = True
            self.tie_rows |= ties
        return x @ W.T

    def new_cache(self, pos_offset: int = 0) -> Cache:
        return Cache.for_config(self.cfg, pos_offset)

    def forward_batch(self, tokens: Sequence[int], cache: Cache) -> np.ndarray:
        """Append len(tokens) cells and run them through the model in one batched pass
        (causal mask inside the batch). Returns logits (n_tokens, vocab), float64.

        Token t of the batch gets cell index n_old + t, which is also its query
        position; it attends to cells 0 .. n_old + t (the kept past plus the batch up
        to itself).
        """
        cfg = self.cfg
        tokens = [int(t) for t in tokens]
        if not tokens:
            return np.zeros((0, cfg.vocab_size))
        if min(tokens) < 0 or max(tokens) >= cfg.vocab_size:
            raise ValueError(f"token id out of range [0, {cfg.vocab_size})")
        n = len(tokens)
        # (n,) rows of this batch that a rounding tie in the emulated activation
        # quantization makes uncertain (act_quant only; see act_quant.TIE_BAND).
        # Ties in the keys and values of earlier batches are not tracked.
        self.tie_rows = np.zeros(n, dtype=bool)
        start = cache.append_cells(tokens)
        n_cells = cache.n_cells

        positions = cache.positions()  # (n_cells,)
        q_pos = positions[start:]  # (n,)
        # Positions are the same in every layer: compute the rotations once.
        k_cos, k_sin = rope_tables(positions, cfg)  # (n_cells, n_rot/2)
        q_cos, q_sin = k_cos[start:], k_sin[start:]  # (n, n_rot/2)
        # Query t (cell start+t) may see cell j iff j <= start + t.
        visible = np.arange(n_cells)[None, :] <= (start + np.arange(n))[:, None]  # (n, n_cells)
        group = cfg.n_heads // cfg.n_kv_heads
        scale = 1.0 / np.sqrt(cfg.head_dim)

        x = self.tok_embd[tokens]  # (n, dim)
        for li, L in enumerate(self.layers):
            # --- attention ---
            h = rms_norm(x, L["attn_norm"], cfg.rms_eps)  # (n, dim)
            q = self.matmul(h, L["wq"], L["types"]["wq"])  # (n, n_heads*hd)
            k = self.matmul(h, L["wk"], L["types"]["wk"], feeds_cache=True)  # (n, n_kv*hd)
            v = self.matmul(h, L["wv"], L["types"]["wv"], feeds_cache=True)  # (n, n_kv*hd)
            if L["bq"] is not None:
                q = q + L["bq"]
            if L["bk"] is not None:
                k = k + L["bk"]
            if L["bv"] is not None:
                v = v + L["bv"]
            q = q.reshape(n, cfg.n_heads, cfg.head_dim)  # (n, n_heads, hd)
            # Store K before RoPE: the cell's position may change after an eviction.
            cache.set_kv(li, start,
                         k.reshape(n, cfg.n_kv_heads, cfg.head_dim),
                         v.reshape(n, cfg.n_kv_heads, cfg.head_dim))

            qr = apply_rope(q, q_cos, q_sin, cfg)  # (n, n_heads, hd)
            kr = apply_rope(cache.keys(li), k_cos, k_sin, cfg)  # (n_cells, n_kv, hd)
            kr = np.repeat(kr, group, axis=1)  # (n_cells, n_heads, hd)
            vv = np.repeat(cache.values(li), group, axis=1)  # (n_cells, n_heads, hd)
            s = np.einsum("qhd,khd->hqk", qr, kr) * scale  # (n_heads, n, n_cells)
            s = np.where(visible[None], s, -np.inf)
            a = softmax(s, axis=-1)  # (n_heads, n, n_cells)
            o = np.einsum("hqk,khd->qhd", a, vv).reshape(n, cfg.n_heads * cfg.head_dim)
            x = x + self.matmul(o, L["wo"], L["types"]["wo"])  # (n, dim)

            # --- SwiGLU feed-forward ---
            h = rms_norm(x, L["ffn_norm"], cfg.rms_eps)  # (n, dim)
            f = silu(self.matmul(h, L["w_gate"], L["types"]["w_gate"])) * \
                self.matmul(h, L["w_up"], L["types"]["w_up"])  # (n, ffn)
            x = x + self.matmul(f, L["w_down"], L["types"]["w_down"])  # (n, dim)

        x = rms_norm(x, self.output_norm, cfg.rms_eps)  # (n, dim)
        return self.matmul(x, self.output, self.output_type)  # (n, vocab)

    def forward(self, token: int, cache: Cache) -> np.ndarray:
        """One token: append its cell, attend over all cells. Returns logits (vocab,)."""
        return self.forward_batch([token], cache)[0]

    def greedy(self, prompt: Sequence[int], n: int, cache: Optional[Cache] = None) -> List[int]:
        """n greedy tokens after the prompt (prompt not included). Never stops early: a
        llama2.c model ends a story with BOS, and callers want a fixed count. Ties go to
        the lowest id (np.argmax)."""
        cache = cache if cache is not None else self.new_cache()
        logits = self.forward_batch(prompt, cache)[-1]
        out = []
        for i in range(n):
            t = int(np.argmax(logits))
            out.append(t)
            if i + 1 < n:
                logits = self.forward(t, cache)
        return out


# ------------------------------------------------------------------------------------
# Detokenizer (eyeballing only)
# ------------------------------------------------------------------------------------

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _gpt2_byte_decoder():
    # Inverse of GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest
    # to code points 256 + k.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    k = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + k)
            k += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def decode(g: gguf_py.GGUFFile, ids: Sequence[int], show_control: bool = False) -> str:
    """Token ids -> text, simply: SPM (`▁` -> space, `<0xNN>` -> byte) or GPT-2 byte-level.
    Control tokens (BOS/EOS...) are dropped unless show_control (then shown as-is)."""
    vocab = g.get("tokenizer.ggml.tokens")
    types = g.get("tokenizer.ggml.token_type") or [1] * len(vocab)
    model = g.get("tokenizer.ggml.model", "llama")
    byte_dec = _gpt2_byte_decoder() if model == "gpt2" else None
    out = bytearray()
    for i in ids:
        piece = vocab[i]
        if types[i] == 3:  # CONTROL
            if show_control:
                out += piece.encode("utf-8")
            continue
        if byte_dec is not None:
            out += bytes(byte_dec.get(ch, ord("?")) for ch in piece) if types[i] != 4 \
                else piece.encode("utf-8")
            continue
        m = _BYTE_TOKEN.match(piece)
        if m:
            out.append(int(m.group(1), 16))
        else:
            out += piece.replace("\u2581", " ").encode("utf-8")
    text = out.decode("utf-8", errors="replace")
    # SentencePiece adds a dummy prefix space to the first word; drop it.
    if byte_dec is None and text.startswith(" "):
        text = text[1:]
    return text


# ------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------

def _parse_ids(s: str) -> List[int]:
    return [int(t) for t in s.replace(",", " ").split()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("logits", help="float64 logits of every position, from an empty cache")
    p.add_argument("--model", required=True)
    p.add_argument("--tokens", required=True, help='space-separated ids, e.g. "1 2 3"')
    p.add_argument("--out", help=".npy file for the (n_tokens, vocab) float64 logits; "
                                 "without it, print the last row's top-5")
    p.add_argument("--sequential", action="store_true",
                   help="feed one token at a time instead of one batch")

    p = sub.add_parser("greedy", help="greedy ids after the prompt, space-separated on one line")
    p.add_argument("--model", required=True)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--prompt-ids", help="default: the BOS id from metadata")
    p.add_argument("--text", action="store_true", help="also print the decoded text to stderr")

    p = sub.add_parser("decode", help="ids -> text (SPM or GPT-2 byte-level, simply)")
    p.add_argument("--model", required=True)
    p.add_argument("--ids", required=True)
    p.add_argument("--show-control", action="store_true")

    args = ap.parse_args(argv)

    if args.cmd == "decode":
        g = gguf_py.load(args.model)
        print(decode(g, _parse_ids(args.ids), args.show_control))
        return 0

    t0 = time.perf_counter()
    model = Model(args.model)
    t_load = time.perf_counter() - t0

    if args.cmd == "logits":
        toks = _parse_ids(args.tokens)
        cache = model.new_cache()
        if args.sequential:
            logits = np.stack([model.forward(t, cache) for t in toks])
        else:
            logits = model.forward_batch(toks, cache)  # (n_tokens, vocab)
        if args.out:
            np.save(args.out, logits)
        else:
            last = logits[-1]
            top = np.argsort(-last, kind="stable")[:5]
            for t in top:
                print(f"{t}\t{last[t]:.6f}\t{model.gguf.get('tokenizer.ggml.tokens')[t]!r}")
        return 0

    if args.cmd == "greedy":
        if args.prompt_ids is not None:
            prompt = _parse_ids(args.prompt_ids)
        else:
            if model.cfg.bos_id is None:
                ap.error("model has no tokenizer.ggml.bos_token_id; pass --prompt-ids")
            prompt = [model.cfg.bos_id]
        t1 = time.perf_counter()
        ids = model.greedy(prompt, args.n)
        t_gen = time.perf_counter() - t1
        print(" ".join(map(str, ids)))
        if args.text:
            print(decode(model.gguf, ids), file=sys.stderr)
            print(f"[load {t_load:.3f}s, {args.n} tokens in {t_gen:.3f}s]", file=sys.stderr)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
