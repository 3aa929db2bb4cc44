"""The reference forward pass: against a naive cache-free forward written
differently, batch / sequential / chunked equality, positions and eviction,
and the stories260K greedy story."""

import cmath
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import llama_ref  # noqa: E402
from ref_testutil import HAVE_STORIES, HERE, STORIES, make_synthetic_qwen2  # noqa: E402


# ======================================================================================
# A naive, cache-free forward pass written differently, to cross-check llama_ref
# ======================================================================================

def naive_logits(model, tokens, positions=None):
    """Recompute the whole sequence from scratch, one head at a time. RoPE written as in
    the original Meta llama code (adjacent pairs as complex numbers) for llama, and as
    HF's rotate_half for qwen2. Returns (T, vocab)."""
    cfg = model.cfg
    T = len(tokens)
    pos = np.arange(T, dtype=np.float64) if positions is None else np.asarray(positions, float)
    hd, nr = cfg.head_dim, cfg.n_rot
    inv = np.array([cfg.rope_base ** (-(2.0 * i) / nr) for i in range(nr // 2)])
    ang = np.outer(pos * cfg.rope_freq_scale, inv)            # (T, nr/2)

    def rope(v):  # v: (T, hd) one head
        v = v.copy()
        if cfg.rope_neox:
            cos = np.concatenate([np.cos(ang), np.cos(ang)], axis=1)
            sin = np.concatenate([np.sin(ang), np.sin(ang)], axis=1)
            x = v[:, :nr]
            rot = np.concatenate([-x[:, nr // 2:], x[:, :nr // 2]], axis=1)
            v[:, :nr] = x * cos + rot * sin
        else:
            for t in range(T):
                for i in range(nr // 2):
                    z = complex(v[t, 2 * i], v[t, 2 * i + 1]) * cmath.exp(1j * ang[t, i])
                    v[t, 2 * i], v[t, 2 * i + 1] = z.real, z.imag
        return v

    def norm(x, w):
        return np.stack([r / np.sqrt((r ** 2).sum() / len(r) + cfg.rms_eps) for r in x]) * w

    x = np.stack([model.tok_embd[t] for t in tokens])
    for L in model.layers:
        h = norm(x, L["attn_norm"])
        q = h @ L["wq"].T + (0 if L["bq"] is None else L["bq"])
        k = h @ L["wk"].T + (0 if L["bk"] is None else L["bk"])
        v = h @ L["wv"].T + (0 if L["bv"] is None else L["bv"])
        heads = []
        for hh in range(cfg.n_heads):
            kvh = hh * cfg.n_kv_heads // cfg.n_heads
            qh = rope(q[:, hh * hd:(hh + 1) * hd])
            kh = rope(k[:, kvh * hd:(kvh + 1) * hd])
            vh = v[:, kvh * hd:(kvh + 1) * hd]
            out = np.zeros((T, hd))
            for t in range(T):
                s = kh[:t + 1] @ qh[t] / np.sqrt(hd)
                p = np.exp(s - s.max())
                out[t] = (p / p.sum()) @ vh[:t + 1]
            heads.append(out)
        x = x + np.concatenate(heads, axis=1) @ L["wo"].T
        h = norm(x, L["ffn_norm"])
        g = h @ L["w_gate"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ L["w_up"].T)) @ L["w_down"].T
    return norm(x, model.output_norm) @ model.output.T


# ======================================================================================
# Forward pass
# ======================================================================================

class ForwardInvariants:
    """Mixin: invariants every architecture must satisfy. Subclasses set self.model."""

    tokens = None

    def test_matches_naive_forward(self):
        want = naive_logits(self.model, self.tokens)
        got = self.model.forward_batch(self.tokens, self.model.new_cache())
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * np.abs(want).max())

    def test_sequential_equals_batch(self):
        batch = self.model.forward_batch(self.tokens, self.model.new_cache())
        cache = self.model.new_cache()
        seq = np.stack([self.model.forward(t, cache) for t in self.tokens])
        np.testing.assert_allclose(seq, batch, rtol=0, atol=1e-10 * np.abs(batch).max())
        # Chunked prefill (3 chunks of uneven size) too.
        cache = self.model.new_cache()
        parts = [self.tokens[:3], self.tokens[3:4], self.tokens[4:]]
        chunked = np.concatenate([self.model.forward_batch(p, cache) for p in parts])
        np.testing.assert_allclose(chunked, batch, rtol=0, atol=1e-10 * np.abs(batch).max())
        self.assertEqual(cache.tokens, list(self.tokens))

    def test_evict_nothing_is_identity(self):
        ref_cache = self.model.new_cache()
        ref = self.model.forward_batch(self.tokens, ref_cache)
        cache = self.model.new_cache()
        out = []
        for t in self.tokens:
            out.append(self.model.forward(t, cache))
            cache.evict(range(cache.n_cells))       # keep every cell, same order
        np.testing.assert_allclose(np.stack(out), ref, rtol=0, atol=1e-10 * np.abs(ref).max())
        for layer in range(self.model.cfg.n_layers):
            np.testing.assert_array_equal(cache.keys(layer), ref_cache.keys(layer))

    def test_position_shift_invariance(self):
        # RoPE attention depends only on q_pos - k_pos: shifting every position (cells and
        # queries) by a constant must not change the logits.
        ref = self.model.forward_batch(self.tokens, self.model.new_cache())
        for offset in (1, 37, 1000):
            with self.subTest(offset=offset):
                got = self.model.forward_batch(self.tokens, self.model.new_cache(pos_offset=offset))
                np.testing.assert_allclose(got, ref, rtol=0, atol=1e-8 * np.abs(ref).max())
        # The naive forward, given shifted positions, agrees as well.
        shifted = naive_logits(self.model, self.tokens, np.arange(len(self.tokens)) + 11)
        np.testing.assert_allclose(shifted, ref, rtol=0, atol=1e-8 * np.abs(ref).max())

    def test_evict_reindexes_positions(self):
        m = self.model
        toks = list(self.tokens)
        cache = m.new_cache()
        m.forward_batch(toks, cache)
        keep = llama_ref.streaming_keep(len(toks), n_sink=2, window=3)
        before = [cache.keys(0)[i].copy() for i in keep]
        cache.evict(keep)
        self.assertEqual(cache.tokens, [toks[i] for i in keep])
        np.testing.assert_array_equal(cache.keys(0), np.stack(before))  # pre-RoPE, unchanged
        np.testing.assert_array_equal(cache.positions(), np.arange(len(keep)))
        got = m.forward(toks[0], cache)
        # Same cells, but laid out by hand in a fresh cache: the new token must sit at
        # position len(keep), right after the survivors, not at its arrival index.
        fresh = m.new_cache()
        full = m.new_cache()
        m.forward_batch(toks, full)
        start = fresh.append_cells([toks[i] for i in keep])
        for layer in range(m.cfg.n_layers):
            fresh.set_kv(layer, start, full.keys(layer)[keep], full.values(layer)[keep])
        want = m.forward(toks[0], fresh)
        np.testing.assert_array_equal(got, want)
        # Dropping the prefix and re-numbering is the same as keeping the old numbering
        # (relative positions); and different from not evicting at all.
        c1, c2 = m.new_cache(), m.new_cache()
        m.forward_batch(toks, c1)
        m.forward_batch(toks, c2)
        c1.evict(range(3, len(toks)))
        c2.evict(range(3, len(toks)))
        c2.pos_offset = 3
        a, b = m.forward(toks[1], c1), m.forward(toks[1], c2)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-8 * np.abs(a).max())
        c3 = m.new_cache()
        m.forward_batch(toks, c3)
        self.assertGreater(np.abs(m.forward(toks[1], c3) - a).max(), 1e-6)
        with self.assertRaises(IndexError):
            c3.evict([0, c3.n_cells])


@unittest.skipUnless(HAVE_STORIES, f"{STORIES} not found")
class TestStories(ForwardInvariants, unittest.TestCase):
    tokens = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315]

    @classmethod
    def setUpClass(cls):
        cls.model = llama_ref.Model(STORIES)

    def test_greedy_story(self):
        ids = self.model.greedy([1], 200)
        self.assertEqual(len(ids), 200)
        text = llama_ref.decode(self.model.gguf, ids)
        self.assertIn("Lily", text)
        words = set(w.strip(".,!?\"'").lower() for w in text.split())
        common = {"the", "a", "was", "she", "to", "and", "her", "day", "once", "upon", "time"}
        self.assertGreaterEqual(len(words & common), 8, text)
        self.assertTrue(text.startswith("Once upon a time"), text)

    def test_cli(self):
        script = os.path.join(HERE, "llama_ref.py")
        run = lambda *a: subprocess.run([sys.executable, script, *a], check=True,
                                        capture_output=True, text=True).stdout
        ids = run("greedy", "--model", STORIES, "--n", "20").split()
        self.assertEqual(ids, [str(t) for t in self.model.greedy([1], 20)])
        text = run("decode", "--model", STORIES, "--ids", " ".join(ids))
        self.assertIn("Once upon a time", text)
        with tempfile.TemporaryDirectory() as td:
            out = os.path.join(td, "l.npy")
            run("logits", "--model", STORIES, "--tokens", "1 403 407", "--out", out)
            lg = np.load(out)
            self.assertEqual((lg.shape, lg.dtype), ((3, 512), np.float64))
            np.testing.assert_array_equal(
                lg, self.model.forward_batch([1, 403, 407], self.model.new_cache()))
        self.assertTrue(run("logits", "--model", STORIES, "--tokens", "1").strip())


class TestSyntheticQwen2(ForwardInvariants, unittest.TestCase):
    tokens = [0, 5, 17, 39, 2, 2, 11, 30, 8]

    @classmethod
    def setUpClass(cls):
        cls._td = tempfile.TemporaryDirectory()
        path = os.path.join(cls._td.name, "qwen2.gguf")
        make_synthetic_qwen2(path, np.random.default_rng(99))
        cls.model = llama_ref.Model(path)

    @classmethod
    def tearDownClass(cls):
        cls._td.cleanup()

    def test_config(self):
        cfg = self.model.cfg
        self.assertTrue(cfg.rope_neox)
        self.assertTrue(self.model.tied)
        self.assertIs(self.model.output, self.model.tok_embd)
        self.assertEqual(cfg.rope_freq_scale, 0.5)
        self.assertEqual(cfg.rope_base, 1e6)
        self.assertIsNotNone(self.model.layers[0]["bq"])
        types = {t.type_name for t in self.model.gguf.tensors.values()}
        self.assertEqual(types, {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q6_K"})

    def test_linear_scaling_halves_positions(self):
        # factor 2 => position p behaves like p/2 unscaled: compare with the naive
        # forward (which applies freq_scale itself) at explicit positions.
        ref = naive_logits(self.model, self.tokens)
        cfg = self.model.cfg
        cfg.rope_freq_scale = 1.0
        try:
            half = naive_logits(self.model, self.tokens, np.arange(len(self.tokens)) / 2)
        finally:
            cfg.rope_freq_scale = 0.5
        np.testing.assert_allclose(half, ref, rtol=0, atol=1e-10 * np.abs(ref).max())


if __name__ == "__main__":
    unittest.main()
