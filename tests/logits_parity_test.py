#!/usr/bin/python3
"""Logits parity: sinkserve's CPU backend against the float64 numpy reference.

For stories260K and synthetic models covering GQA, tied and untied output, qwen2
(NeoX RoPE, q/k/v biases), RoPE frequency base, linear RoPE scaling and every
weight type, `sinkserve generate --dump-logits` must match
tests/reference/llama_ref.py within max|a - b| / max|b| < 1e-4 (F32 weights)
or 1e-3 (F16, BF16). Quantized types (Q8_0, Q4_0, Q4_K, Q6_K) must match,
within 1e-3, the reference run on the dequantized weights with ggml's
activation quantization emulated (llama_ref.Model(act_quant=True), see
reference/act_quant.py), and stay within ACT_QUANT_TOL of the pure float64
reference. Also: chunked prefill gives the same logits, and 200 greedy tokens
from BOS on stories260K equal the reference's.

Why two references for quantized types: our matmuls, like ggml's, quantize the
activations to Q8_0 / Q8_K per row before the integer dot products. That alone
moves logits by 2-3e-2 of their max on these random models (measured: q8_0
2.4e-2, q4_0 1.9e-2, q4_K 3.0e-2, q6_K 2.6e-2), so against the pure float
reference only a loose bound holds. With the same activation rounding emulated
the remaining differences are float32 accumulation order (measured 1e-7 to
3e-7 for every quantized case), except at a position where an activation's
scaled value sits within float32 noise of a rounding tie (act_quant.TIE_BAND):
which side it lands on depends on the last bits of the activations, so two
correct implementations may differ there by a quant step, which a middle
layer amplifies to ~1e-2 of that position's logits (measured: qwen2 Q8_0,
position 5, 9.2e-3, an exact tie in layer 1's attention output, seen with the
AVX2 and portable kernels, not with AVX-512's). The reference marks such
positions (and, for a tie in a key or value, those after it); the 1e-3 bound
holds at the others, which must be at least two per model and half of all,
and every position stays within ACT_QUANT_TOL of the pure reference.

CTest sets SINKSERVE_BIN (the CMake build dir) and SINKSERVE_SHARED.
"""

import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "reference"))

import llama_ref  # noqa: E402

BIN = os.environ.get("SINKSERVE_BIN", os.path.join(HERE, "..", "build"))
SHARED = os.environ.get("SINKSERVE_SHARED", os.path.join(HERE, "..", "..", "shared"))
SINKSERVE = os.path.join(BIN, "service", "sinkserve")
MAKE_MODEL = os.path.join(BIN, "tests", "make_synthetic_model")
STORIES = os.path.join(SHARED, "models", "stories260K.gguf")

# A prompt that is not a story start, with a repeated token; ids < 512.
PROMPT = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 17, 99, 5, 260, 42]


def rel_error(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def our_logits(model, tokens, vocab, extra=()):
    """(n_tokens, vocab) float32 logits of every prompt position."""
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        subprocess.run(
            [SINKSERVE, "generate", "--model", model, "--prompt-ids",
             ",".join(map(str, tokens)), "--max-tokens", "0", "--threads", "2",
             "--dump-logits", f.name, *extra],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return np.fromfile(f.name, dtype="<f4").reshape(-1, vocab)


_ref_models = {}


def ref_model(path, act_quant=False):
    key = (path, act_quant)
    if key not in _ref_models:
        _ref_models[key] = llama_ref.Model(path, act_quant=act_quant)
    return _ref_models[key]


def ref_tie_rows(model, tokens):
    """(n_tokens,) bool: positions whose emulated activation quantization
    sits on a rounding tie somewhere (llama_ref.Model.tie_rows)."""
    model.forward_batch(tokens, model.new_cache())
    return model.tie_rows.copy()


def ref_logits(path, tokens, act_quant=False):
    model = ref_model(path, act_quant)
    return model.forward_batch(tokens, model.new_cache())  # (n_tokens, vocab)


class Synthetic:
    """Writes synthetic models once into a temporary directory."""

    dir = None

    @classmethod
    def path(cls, name, **spec):
        if cls.dir is None:
            cls.dir = tempfile.TemporaryDirectory(prefix="logits_parity_")
        path = os.path.join(cls.dir.name, name + ".gguf")
        if not os.path.exists(path):
            args = [MAKE_MODEL, "--out", path, "--quiet"]
            for key, value in spec.items():
                flag = "--" + key.replace("_", "-")
                if value is True:
                    args.append(flag)
                else:
                    args += [flag, str(value)]
            subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
        return path


# See the module docstring: against the pure float reference, activation
# quantization, not a kernel error, dominates; against the emulating reference
# the 1e-3 holds.
ACT_QUANT_TOL = 5e-2
QUANT_TOL = 1e-3

# name -> (make_synthetic_model flags, tolerance). Dims are multiples of 256 so
# that the k-quants (256-element super-blocks) fit every matrix.
BASE = dict(dim=256, layers=2, heads=8, kv_heads=2, ffn=512, vocab=512, seed=7)
CASES = {
    "llama_f32_gqa_untied": (dict(BASE), 1e-4),
    "llama_f32_tied_rope": (dict(BASE, tied=True, rope_base=500000, rope_scale=4), 1e-4),
    "llama_f32_mha": (dict(BASE, kv_heads=8), 1e-4),
    "qwen2_f32": (dict(BASE, arch="qwen2", rope_base=1000000), 1e-4),
    "qwen2_f32_tied": (dict(BASE, arch="qwen2", tied=True), 1e-4),
    "llama_f16": (dict(BASE, type="f16"), 1e-3),
    "llama_bf16": (dict(BASE, type="bf16"), 1e-3),
    "llama_q8_0": (dict(BASE, type="q8_0"), ACT_QUANT_TOL),
    "llama_q4_0": (dict(BASE, type="q4_0"), ACT_QUANT_TOL),
    "llama_q4_k": (dict(BASE, type="q4_K"), ACT_QUANT_TOL),
    "llama_q6_k": (dict(BASE, type="q6_K"), ACT_QUANT_TOL),
    "qwen2_q8_0_tied": (dict(BASE, arch="qwen2", type="q8_0", tied=True), ACT_QUANT_TOL),
}


class LogitsParityTest(unittest.TestCase):
    maxDiff = None

    def check(self, model, tol, tokens=PROMPT):
        vocab = ref_model(model).cfg.vocab_size
        ref = ref_logits(model, tokens)
        ours = our_logits(model, tokens, vocab)
        self.assertEqual(ours.shape, ref.shape)
        err = rel_error(ours, ref)
        line = f"  {os.path.basename(model)}: rel error {err:.2e} (limit {tol:.0e})"
        quantized = tol == ACT_QUANT_TOL
        if quantized:
            emulating = ref_model(model, act_quant=True)
            clean = ~ref_tie_rows(emulating, tokens)
            emulated = rel_error(ours[clean],
                                 emulating.forward_batch(tokens, emulating.new_cache())[clean])
            line += f"; vs emulated activation quantization {emulated:.2e} " \
                    f"(limit {QUANT_TOL:.0e}) at {clean.sum()} of {len(tokens)} positions"
        print(line, file=sys.stderr)
        self.assertLess(err, tol)
        if quantized:
            self.assertGreaterEqual(clean.sum(), 2)
            self.assertLess(emulated, QUANT_TOL)
            self.clean_positions += int(clean.sum())
            self.quantized_positions += len(tokens)
        return ours

    def test_stories260k(self):
        ours = self.check(STORIES, 1e-4)
        # Chunked prefill (5 tokens per step) gives the same logits.
        chunked = our_logits(STORIES, PROMPT, 512, extra=("--batch", "5"))
        self.assertLess(rel_error(chunked, ours), 1e-5)

    def setUp(self):
        self.clean_positions = self.quantized_positions = 0

    def test_synthetic(self):
        for name, (spec, tol) in CASES.items():
            with self.subTest(name):
                self.check(Synthetic.path(name, **spec), tol)
        # Off a rounding tie are most positions, or the tight check says little.
        print(f"  quantized: 1e-3 checked at {self.clean_positions} of "
              f"{self.quantized_positions} positions", file=sys.stderr)
        self.assertGreaterEqual(2 * self.clean_positions, self.quantized_positions)

    def test_stories260k_greedy_200(self):
        ref = ref_model(STORIES).greedy([1], 200)
        out = subprocess.run(
            [SINKSERVE, "generate", "--model", STORIES, "--temperature", "0",
             "--max-tokens", "200", "--ignore-eos", "--ids", "--threads", "2"],
            check=True, capture_output=True, text=True).stdout
        ours = [int(t) for t in out.split()]
        self.assertEqual(ours, ref)


if __name__ == "__main__":
    unittest.main(verbosity=2)
