"""RoPE in the reference: relative-position invariance of attention scores and
the two pairings (adjacent for llama, split halves for NeoX / qwen2)."""

import os
import sys
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import llama_ref  # noqa: E402


class TestRopeRelative(unittest.TestCase):
    """Attention scores depend only on relative position, for both RoPE styles."""

    def test_scores_shift_invariant(self):
        rng = np.random.default_rng(7)
        for neox in (False, True):
            for n_rot in (16, 8):  # full and partial rotary
                cfg = llama_ref.Config("x", 64, 1, 4, 2, 16, 1, 1, 1e-5, 10000.0, 0.5,
                                       n_rot, neox, 0, None, None)
                q = rng.standard_normal((5, 4, 16))             # (n_q, n_heads, head_dim)
                k = rng.standard_normal((9, 2, 16))             # (n_k, n_kv_heads, head_dim)
                qp = np.array([8, 9, 10, 11, 12.0])
                kp = np.arange(9.0)
                base = llama_ref.attention_scores(q, qp, k, kp, cfg)  # (n_heads, n_q, n_k)
                for c in (1, 123, 100000):
                    with self.subTest(neox=neox, n_rot=n_rot, shift=c):
                        s = llama_ref.attention_scores(q, qp + c, k, kp + c, cfg)
                        np.testing.assert_allclose(s, base, rtol=0, atol=1e-9)
                # Not vacuous: moving only the query changes the scores.
                s = llama_ref.attention_scores(q, qp + 3, k, kp, cfg)
                self.assertGreater(np.abs(s - base).max(), 1e-3)

    def test_rope_styles_and_norm(self):
        # Position 0 is the identity; rotation preserves each pair's norm; llama pairs
        # are (2i, 2i+1) and qwen2 pairs are (i, i + d/2).
        cfg_l = llama_ref.Config("llama", 8, 1, 1, 1, 4, 1, 1, 1e-5, 10000.0, 1.0, 4, False, 0, None, None)
        cfg_n = llama_ref.Config("qwen2", 8, 1, 1, 1, 4, 1, 1, 1e-5, 10000.0, 1.0, 4, True, 0, None, None)
        x = np.array([[[1.0, 2.0, 3.0, 4.0]]])                   # (1, 1, 4)
        for cfg in (cfg_l, cfg_n):
            c, s = llama_ref.rope_tables(np.array([0.0]), cfg)
            np.testing.assert_array_equal(llama_ref.apply_rope(x, c, s, cfg), x)
        c, s = llama_ref.rope_tables(np.array([1.0]), cfg_l)     # theta = (1, 0.01)
        y = llama_ref.apply_rope(x, c, s, cfg_l)[0, 0]
        np.testing.assert_allclose(y[:2], [np.cos(1) - 2 * np.sin(1), np.sin(1) + 2 * np.cos(1)])
        np.testing.assert_allclose(np.hypot(y[2], y[3]), 5.0)
        y = llama_ref.apply_rope(x, c, s, cfg_n)[0, 0]
        np.testing.assert_allclose([y[0], y[2]], [np.cos(1) - 3 * np.sin(1), np.sin(1) + 3 * np.cos(1)])


if __name__ == "__main__":
    unittest.main()
