"""The reference's emulation of ggml's activation quantization (act_quant.py):
hand-made blocks with known roundings, a scalar transliteration of ggml's
quantize_row_q8_0_ref / quantize_row_q8_K_ref loops, and the forward pass with
act_quant on."""

import os
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import act_quant  # noqa: E402
import llama_ref  # noqa: E402
from ref_testutil import HAVE_STORIES, STORIES, make_synthetic_qwen2  # noqa: E402

F32 = np.float32


def scalar_q8_0(x):
    """ggml's quantize_row_q8_0_ref then dequantize_row_q8_0, one float32 scalar at
    a time. x: float32 list of 32."""
    amax = F32(0)
    for v in x:
        amax = max(amax, abs(F32(v)))
    d = F32(amax / F32(127))
    idv = F32(F32(1) / d) if d != 0 else F32(0)
    d16 = float(np.float16(d))
    out = []
    for v in x:
        p = float(F32(F32(v) * idv))
        q = int(np.floor(abs(p) + 0.5)) * (1 if p >= 0 else -1)   # roundf
        out.append(q * d16)
    return out


def scalar_q8_k(x):
    """ggml's quantize_row_q8_K_ref then dequantize_row_q8_K. x: float32 list of 256."""
    mx, amax = F32(0), F32(0)
    for v in x:
        if abs(F32(v)) > amax:
            amax, mx = abs(F32(v)), F32(v)
    if amax == 0:
        return [0.0] * len(x)
    iscale = F32(F32(-127) / mx)
    out = []
    d = float(F32(F32(1) / iscale))
    for v in x:
        fval = float(F32(iscale * F32(v)))
        q = min(127, int(round(fval)))            # Python's round: half to even
        out.append(q * d)
    return out


class TestHandMade(unittest.TestCase):

    def test_q8_0_rounds_half_away_and_uses_the_f16_scale(self):
        # amax 127 -> d = 1 exactly: 2.5 -> 3, -2.5 -> -3, 0.5 -> 1.
        x = np.zeros(32)
        x[:5] = [127, 2.5, -2.5, 0.5, -126.5]
        np.testing.assert_array_equal(act_quant.quantize_q8_0(x)[:5], [127, 3, -3, 1, -127])
        # amax 1 -> d = 1/127, stored as F16 (1/127 is not an F16 number).
        x = np.zeros(32)
        x[0], x[1] = 1.0, 0.5
        got = act_quant.quantize_q8_0(x)
        d16 = float(np.float16(F32(1) / F32(127)))
        self.assertNotEqual(d16, 1 / 127)
        self.assertEqual(got[0], 127 * d16)
        self.assertEqual(got[1], 64 * d16)            # 63.5 -> 64
        np.testing.assert_array_equal(act_quant.quantize_q8_0(np.zeros((2, 64))),
                                      np.zeros((2, 64)))

    def test_q8_k_rounds_half_even_with_the_signed_max(self):
        x = np.zeros(256)
        x[:4] = [127, 2.5, -2.5, 3.5]                # iscale = -1: d = -1
        np.testing.assert_array_equal(act_quant.quantize_q8_k(x)[:4], [127, 2, -2, 4])
        # The first element of largest magnitude sets the sign; a later one of the
        # same magnitude and the other sign still fits (no -128 needed).
        x[:2] = [-127, 127]
        np.testing.assert_array_equal(act_quant.quantize_q8_k(x)[:2], [-127, 127])
        np.testing.assert_array_equal(act_quant.quantize_q8_k(np.zeros(512)), np.zeros(512))

    def test_bad_widths_and_float_types(self):
        with self.assertRaises(ValueError):
            act_quant.quantize_q8_0(np.zeros(48))
        with self.assertRaises(ValueError):
            act_quant.quantize_q8_k(np.zeros(128))
        x = np.random.default_rng(1).standard_normal((3, 64))
        for t in ("F32", "F16", "BF16"):
            np.testing.assert_array_equal(act_quant.quantize_activations(x, t), x)

    def test_near_tie_rows_marks_rows_on_a_rounding_boundary(self):
        # amax 127 -> d = 1 (Q8_0) and iscale = -1 (Q8_K): x is its own scaled value.
        x = np.zeros((4, 256))
        x[:, 0] = 127
        x[1, 7] = 2.5                                   # on the boundary
        x[2, 9] = -40.5 * (1 + 2e-7)                    # ~2 float32 ulps off it
        x[3, 9] = 40.5 * (1 + 1e-5)                     # clearly off it
        for t in ("Q8_0", "Q4_0", "Q4_K", "Q6_K"):
            np.testing.assert_array_equal(act_quant.near_tie_rows(x, t),
                                          [False, True, True, False], t)
        np.testing.assert_array_equal(act_quant.near_tie_rows(x, "F32"), [False] * 4)


class TestVsScalarLoops(unittest.TestCase):

    def test_random_rows(self):
        rng = np.random.default_rng(2024)
        for scale in (1e-3, 1.0, 300.0):
            x = (rng.standard_normal((3, 512)) * scale).astype(F32)
            x[0, 7] = 0                                # exact zeros
            x[1, :256] = np.round(x[1, :256])           # many exact ties
            got0 = act_quant.quantize_q8_0(x)
            want0 = np.array([sum((scalar_q8_0(list(r[i:i + 32])) for i in range(0, 512, 32)),
                                  []) for r in x])
            np.testing.assert_array_equal(got0, want0)
            gotk = act_quant.quantize_q8_k(x)
            wantk = np.array([sum((scalar_q8_k(list(r[i:i + 256])) for i in range(0, 512, 256)),
                                  []) for r in x])
            np.testing.assert_array_equal(gotk, wantk)
            # A quantized copy is close to the original: half a step per element,
            # plus, for Q8_0, 127 times the F16 rounding of the step.
            for got, block in ((got0, 32), (gotk, 256)):
                step = np.abs(x.reshape(-1, block)).max(axis=1, keepdims=True) / 127
                bound = 0.5 * step * (1 + 1e-6)
                if block == 32:
                    bound += 127 * np.abs(step.astype(np.float16) - step)
                err = np.abs(got - x).reshape(-1, block)
                self.assertTrue(np.all(err <= bound), scale)


class TestForwardWithActQuant(unittest.TestCase):

    def test_quantized_model_moves_slightly(self):
        with tempfile.TemporaryDirectory() as td:
            path = os.path.join(td, "qwen2.gguf")
            # Every weight type; ffn = 256 so Q8_K rows exist (ffn_down).
            make_synthetic_qwen2(path, np.random.default_rng(99))
            exact = llama_ref.Model(path)
            emulated = llama_ref.Model(path, act_quant=True)
        self.assertEqual(emulated.layers[0]["types"]["wq"], "Q8_0")
        self.assertEqual(emulated.layers[1]["types"]["w_down"], "Q6_K")
        tokens = [0, 5, 17, 39, 2, 11]
        a = exact.forward_batch(tokens, exact.new_cache())
        b = emulated.forward_batch(tokens, emulated.new_cache())
        rel = np.abs(a - b).max() / np.abs(a).max()
        # Activation rounding of up to 1/254 of a block's max per element: a visible
        # change (measured 5e-2 on this dim-32 model), far from the O(1) a wrong
        # scale or block layout would give.
        self.assertGreater(rel, 1e-4)
        self.assertLess(rel, 0.2)

    @unittest.skipUnless(HAVE_STORIES, f"{STORIES} not found")
    def test_float_model_is_unchanged(self):
        exact = llama_ref.Model(STORIES)
        emulated = llama_ref.Model(STORIES, act_quant=True)
        tokens = [1, 403, 407]
        np.testing.assert_array_equal(emulated.forward_batch(tokens, emulated.new_cache()),
                                      exact.forward_batch(tokens, exact.new_cache()))


if __name__ == "__main__":
    unittest.main()
