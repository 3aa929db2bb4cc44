"""Self-checks of the numpy reference (gguf_py, dequant, llama_ref).

Run from the repository root:
    /usr/bin/python3 -m unittest discover -s tests/reference -v

Nothing here touches the C++ code. Data comes from $SINKSERVE_SHARED (default
/work/shared); tests that need stories260K.gguf skip when it is absent.
"""

import cmath
import os
import struct
import subprocess
import sys
import tempfile
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import gguf_py  # noqa: E402
import dequant  # noqa: E402
import llama_ref  # noqa: E402
from gguf_py import (T_ARRAY, T_BOOL, T_FLOAT32, T_FLOAT64, T_INT8, T_INT16, T_INT32,  # noqa: E402
                     T_INT64, T_STRING, T_UINT8, T_UINT16, T_UINT32, T_UINT64)

SHARED = os.environ.get("SINKSERVE_SHARED", "/work/shared")
STORIES = os.path.join(SHARED, "models", "stories260K.gguf")
HAVE_STORIES = os.path.exists(STORIES)


def f16_bytes(x: float) -> bytes:
    return np.array([x], dtype="<f2").tobytes()


# ======================================================================================
# Dequantization: hand-made blocks with known values
# ======================================================================================

class TestDequantHandMade(unittest.TestCase):

    def test_f32_f16_bf16(self):
        vals = [0.0, 1.0, -2.5, 65504.0, 2.0 ** -24]
        raw = np.frombuffer(np.array(vals, "<f4").tobytes(), np.uint8)
        np.testing.assert_array_equal(dequant.dequantize_raw("F32", raw, 5), vals)
        raw = np.frombuffer(np.array(vals, "<f2").tobytes(), np.uint8)
        np.testing.assert_array_equal(dequant.dequantize_raw("F16", raw, 5), vals)
        # bf16: top 16 bits of a float32. 1.0 = 0x3F80, -2.5 = 0xC020, 3.140625 = 0x4049.
        raw = np.frombuffer(struct.pack("<4H", 0x3F80, 0xC020, 0x4049, 0x0000), np.uint8)
        np.testing.assert_array_equal(dequant.dequantize_raw("BF16", raw, 4),
                                      [1.0, -2.5, 3.140625, 0.0])

    def test_q8_0(self):
        qs = np.arange(-16, 16, dtype=np.int8)                      # 32 quants
        raw = f16_bytes(0.5) + qs.tobytes()
        self.assertEqual(len(raw), 34)
        got = dequant.dequantize_raw("Q8_0", np.frombuffer(raw, np.uint8), 32)
        np.testing.assert_array_equal(got, np.arange(-16, 16) * 0.5)
        # Extremes of int8.
        raw = f16_bytes(-0.25) + np.array([-128, 127] + [0] * 30, np.int8).tobytes()
        got = dequant.dequantize_raw("Q8_0", np.frombuffer(raw, np.uint8), 32)
        self.assertEqual(got[0], 32.0)
        self.assertEqual(got[1], -31.75)

    def test_q4_0(self):
        # qs[j] = lo nibble j, hi nibble 15 - j  =>  x[j] = (j-8)*d, x[16+j] = (7-j)*d.
        qs = bytes((j & 0xF) | ((15 - j) << 4) for j in range(16))
        raw = f16_bytes(2.0) + qs
        self.assertEqual(len(raw), 18)
        got = dequant.dequantize_raw("Q4_0", np.frombuffer(raw, np.uint8), 32)
        want = [(j - 8) * 2.0 for j in range(16)] + [(7 - j) * 2.0 for j in range(16)]
        np.testing.assert_array_equal(got, want)

    @staticmethod
    def pack_q4_k(d, dmin, sc, m, q):
        """Encode one Q4_K block: 8 sub-blocks of 32, 6-bit scale sc[s] / min m[s],
        4-bit quants q[256]. value[e] = d*sc[e//32]*q[e] - dmin*m[e//32]."""
        s = bytearray(12)
        for j in range(4):
            # Sub-blocks 0..3 keep 6 bits in bytes j / j+4; the top 2 bits of those
            # bytes carry bits 4..5 of sub-block j+4's scale / min.
            s[j] = sc[j] | ((sc[j + 4] >> 4) << 6)
            s[j + 4] = m[j] | ((m[j + 4] >> 4) << 6)
            s[j + 8] = (sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4)
        qs = bytearray(128)
        for e in range(256):
            chunk, rest = divmod(e, 64)      # 64 outputs per 32 bytes
            nib, l = divmod(rest, 32)        # first 32: low nibbles, next 32: high
            qs[32 * chunk + l] |= q[e] << (4 * nib)
        return f16_bytes(d) + f16_bytes(dmin) + bytes(s) + bytes(qs)

    def test_q4_k(self):
        d, dmin = 0.5, 0.25
        sc = [1, 2, 3, 63, 17, 33, 48, 60]   # sub-blocks 4..7 use bits 4..5 too
        m = [0, 5, 63, 9, 16, 31, 47, 62]
        q = [(e * 7 + e // 32) % 16 for e in range(256)]
        raw = self.pack_q4_k(d, dmin, sc, m, q)
        self.assertEqual(len(raw), 144)
        got = dequant.dequantize_raw("Q4_K", np.frombuffer(raw, np.uint8), 256)
        want = [d * sc[e // 32] * q[e] - dmin * m[e // 32] for e in range(256)]
        np.testing.assert_array_equal(got, want)
        # And the scale/min unpacker on its own.
        s_got, m_got = dequant.q4_k_scale_min(np.frombuffer(raw[4:16], np.uint8)[None])
        self.assertEqual(s_got[0].tolist(), sc)
        self.assertEqual(m_got[0].tolist(), m)

    @staticmethod
    def pack_q6_k(d, scales, q):
        """Encode one Q6_K block: 16 int8 scales (one per 16 elements), quants q[256] in
        [-32, 31]. value[e] = d * scales[e//16] * q[e]."""
        ql = bytearray(128)
        qh = bytearray(64)
        for e in range(256):
            half, rest = divmod(e, 128)
            k, l = divmod(rest, 32)
            u = q[e] + 32                                   # 6-bit unsigned
            ql[64 * half + l + 32 * (k % 2)] |= (u & 0xF) << (4 * (k // 2))
            qh[32 * half + l] |= (u >> 4) << (2 * k)
        return bytes(ql) + bytes(qh) + np.array(scales, np.int8).tobytes() + f16_bytes(d)

    def test_q6_k(self):
        d = 0.125
        scales = [1, -1, 2, -3, 5, 8, -13, 21, 34, -55, 89, 127, -128, 7, 0, 3]
        q = [((e * 13) % 64) - 32 for e in range(256)]
        raw = self.pack_q6_k(d, scales, q)
        self.assertEqual(len(raw), 210)
        got = dequant.dequantize_raw("Q6_K", np.frombuffer(raw, np.uint8), 256)
        want = [d * scales[e // 16] * q[e] for e in range(256)]
        np.testing.assert_array_equal(got, want)

    def test_multi_block_and_reshape(self):
        # Two rows of 64 Q8_0 values: ggml dims {64, 2} -> numpy (2, 64), row-major.
        rows = []
        want = []
        for r in range(2):
            for b in range(2):
                qs = np.arange(32, dtype=np.int8) - 10 * (2 * r + b)
                rows.append(f16_bytes(1.0 + r) + qs.tobytes())
                want.append(qs.astype(np.float64) * (1.0 + r))
        info = gguf_py.TensorInfo("w", (64, 2), gguf_py.GGML_TYPE_BY_NAME["Q8_0"], 0,
                                  np.frombuffer(b"".join(rows), np.uint8))
        got = dequant.dequantize(info)
        self.assertEqual(got.shape, (2, 64))
        np.testing.assert_array_equal(got.reshape(-1), np.concatenate(want))

    def test_wrong_size_and_unknown_type(self):
        with self.assertRaises(gguf_py.GGUFError):
            dequant.dequantize_raw("Q8_0", np.zeros(33, np.uint8), 32)
        with self.assertRaises(gguf_py.GGUFError):
            dequant.dequantize_raw("Q5_K", np.zeros(176, np.uint8), 256)


# ======================================================================================
# Dequantization: vectorized code vs. a line-by-line transliteration of ggml's loops
# ======================================================================================

F32 = np.float32


def _h(b, off):
    return F32(np.frombuffer(bytes(b[off:off + 2]), "<f2")[0])


def scalar_q4_0(b):
    y = [0.0] * 32
    d = _h(b, 0)
    for j in range(16):
        x0 = (b[2 + j] & 0x0F) - 8
        x1 = (b[2 + j] >> 4) - 8
        y[j] = F32(x0) * d
        y[j + 16] = F32(x1) * d
    return y


def scalar_q8_0(b):
    d = _h(b, 0)
    return [F32(int(np.int8(np.uint8(b[2 + j])))) * d for j in range(32)]


def get_scale_min_k4(j, q):
    if j < 4:
        return q[j] & 63, q[j + 4] & 63
    return (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)


def scalar_q4_k(b):
    d, mn = _h(b, 0), _h(b, 2)
    scales = b[4:16]
    q = b[16:144]
    y = []
    qi = 0
    is_ = 0
    for _ in range(0, 256, 64):
        sc, m = get_scale_min_k4(is_ + 0, scales)
        d1, m1 = d * F32(sc), mn * F32(m)
        sc, m = get_scale_min_k4(is_ + 1, scales)
        d2, m2 = d * F32(sc), mn * F32(m)
        y += [d1 * F32(q[qi + l] & 0xF) - m1 for l in range(32)]
        y += [d2 * F32(q[qi + l] >> 4) - m2 for l in range(32)]
        qi += 32
        is_ += 2
    return y


def scalar_q6_k(b):
    ql, qh = b[0:128], b[128:192]
    sc = [int(np.int8(np.uint8(v))) for v in b[192:208]]
    d = _h(b, 208)
    y = [0.0] * 256
    yo = qlo = qho = sco = 0
    for _ in range(0, 256, 128):
        for l in range(32):
            is_ = l // 16
            q1 = ((ql[qlo + l] & 0xF) | (((qh[qho + l] >> 0) & 3) << 4)) - 32
            q2 = ((ql[qlo + l + 32] & 0xF) | (((qh[qho + l] >> 2) & 3) << 4)) - 32
            q3 = ((ql[qlo + l] >> 4) | (((qh[qho + l] >> 4) & 3) << 4)) - 32
            q4 = ((ql[qlo + l + 32] >> 4) | (((qh[qho + l] >> 6) & 3) << 4)) - 32
            y[yo + l] = d * F32(sc[sco + is_ + 0]) * F32(q1)
            y[yo + l + 32] = d * F32(sc[sco + is_ + 2]) * F32(q2)
            y[yo + l + 64] = d * F32(sc[sco + is_ + 4]) * F32(q3)
            y[yo + l + 96] = d * F32(sc[sco + is_ + 6]) * F32(q4)
        yo += 128
        qlo += 64
        qho += 32
        sco += 8
    return y


def random_blocks(rng, type_name, n_blocks):
    """Random bytes with the f16 scale fields replaced by finite, moderate values."""
    _, qk, size = gguf_py.GGML_TYPES[gguf_py.GGML_TYPE_BY_NAME[type_name]]
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    d_offsets = {"Q4_0": [0], "Q8_0": [0], "Q4_K": [0, 2], "Q6_K": [208]}[type_name]
    for off in d_offsets:
        d = rng.uniform(-0.05, 0.05, size=n_blocks).astype("<f2")
        raw[:, off:off + 2] = d.view(np.uint8).reshape(n_blocks, 2)
    return raw, qk


class TestDequantVsScalarLoops(unittest.TestCase):

    def check(self, type_name, scalar_fn, n_blocks=7):
        rng = np.random.default_rng(1234)
        raw, qk = random_blocks(rng, type_name, n_blocks)
        got = dequant.dequantize_raw(type_name, raw.reshape(-1), n_blocks * qk)
        want = np.concatenate([np.array(scalar_fn(list(map(int, blk))), dtype=np.float64)
                               for blk in raw])
        # Same float32 operations in the same order: bit-identical.
        np.testing.assert_array_equal(got, want)

    def test_q4_0(self):
        self.check("Q4_0", scalar_q4_0)

    def test_q8_0(self):
        self.check("Q8_0", scalar_q8_0)

    def test_q4_k(self):
        self.check("Q4_K", scalar_q4_k)

    def test_q6_k(self):
        self.check("Q6_K", scalar_q6_k)


# ======================================================================================
# GGUF parser
# ======================================================================================

class TestParserSynthetic(unittest.TestCase):

    def roundtrip(self, version, alignment):
        meta = [
            ("general.architecture", T_STRING, "llama"),
            ("t.u8", T_UINT8, 250), ("t.i8", T_INT8, -100),
            ("t.u16", T_UINT16, 65000), ("t.i16", T_INT16, -32000),
            ("t.u32", T_UINT32, 4000000000), ("t.i32", T_INT32, -2000000000),
            ("t.f32", T_FLOAT32, 0.5), ("t.bool", T_BOOL, True),
            ("t.u64", T_UINT64, 2 ** 63 + 5), ("t.i64", T_INT64, -(2 ** 62)),
            ("t.f64", T_FLOAT64, 1e-300), ("t.str", T_STRING, "héllo ▁wörld"),
            ("t.arr_i32", T_ARRAY, (T_INT32, [1, -2, 3])),
            ("t.arr_str", T_ARRAY, (T_STRING, ["a", "", "<0x0A>"])),
            ("t.arr_empty", T_ARRAY, (T_FLOAT32, [])),
            ("t.nested", T_ARRAY, (T_ARRAY, [(T_UINT8, [1, 2]), (T_STRING, ["x"]),
                                             (T_ARRAY, [(T_BOOL, [False, True])])])),
        ]
        if alignment != 32:
            meta.append(("general.alignment", T_UINT32, alignment))
        a = np.arange(6, dtype="<f4")
        b = np.arange(5, dtype="<f2")
        tensors = [("a", (3, 2), 0, a.tobytes()), ("b", (5,), 1, b.tobytes())]
        with tempfile.TemporaryDirectory() as td:
            path = os.path.join(td, "t.gguf")
            gguf_py.write(path, meta, tensors, version=version, alignment=alignment)
            g = gguf_py.load(path)
            self.assertEqual(g.version, version)
            self.assertEqual(g.alignment, alignment)
            self.assertEqual(g.data_offset % alignment, 0)
            md = g.metadata
            self.assertEqual(md["t.u8"], 250)
            self.assertEqual(md["t.i8"], -100)
            self.assertEqual(md["t.u16"], 65000)
            self.assertEqual(md["t.i16"], -32000)
            self.assertEqual(md["t.u32"], 4000000000)
            self.assertEqual(md["t.i32"], -2000000000)
            self.assertEqual(md["t.f32"], 0.5)
            self.assertIs(md["t.bool"], True)
            self.assertEqual(md["t.u64"], 2 ** 63 + 5)
            self.assertEqual(md["t.i64"], -(2 ** 62))
            self.assertEqual(md["t.f64"], 1e-300)
            self.assertEqual(md["t.str"], "héllo ▁wörld")
            self.assertEqual(md["t.arr_i32"], [1, -2, 3])
            self.assertEqual(md["t.arr_str"], ["a", "", "<0x0A>"])
            self.assertEqual(md["t.arr_empty"], [])
            self.assertEqual(md["t.nested"], [[1, 2], ["x"], [[False, True]]])
            self.assertEqual(g.metadata_types["t.nested"], T_ARRAY)
            self.assertEqual(list(g.tensors), ["a", "b"])
            self.assertEqual(g.tensor("a").np_shape, (2, 3))
            np.testing.assert_array_equal(dequant.dequantize(g.tensor("a")),
                                          a.reshape(2, 3))
            np.testing.assert_array_equal(dequant.dequantize(g.tensor("b")), b)
            self.assertEqual(g.tensor("b").offset % alignment, 0)

    def test_v3_default_alignment(self):
        self.roundtrip(3, 32)

    def test_v2_custom_alignment(self):
        self.roundtrip(2, 64)

    def test_rejects_bad_files(self):
        with tempfile.TemporaryDirectory() as td:
            path = os.path.join(td, "t.gguf")
            gguf_py.write(path, [("k", T_STRING, "v")], [("a", (4,), 0, bytes(16))])
            with open(path, "rb") as f:
                data = f.read()
            cases = {
                "bad magic": b"GGUX" + data[4:],
                "version 1": data[:4] + struct.pack("<I", 1) + data[8:],
                "truncated header": data[:30],
                "truncated data": data[:-4],
            }
            for what, blob in cases.items():
                with self.subTest(what):
                    with open(path, "wb") as f:
                        f.write(blob)
                    with self.assertRaises(gguf_py.GGUFError):
                        gguf_py.load(path)


@unittest.skipUnless(HAVE_STORIES, f"{STORIES} not found")
class TestParserStories(unittest.TestCase):

    def test_stories260k(self):
        g = gguf_py.load(STORIES)
        self.assertEqual(os.path.getsize(STORIES), 1185376)
        self.assertEqual(g.version, 3)
        self.assertEqual(len(g.tensors), 48)
        self.assertEqual(g.get("general.architecture"), "llama")
        self.assertEqual(g.get("tokenizer.ggml.model"), "llama")
        for key, want in [("llama.embedding_length", 64), ("llama.block_count", 5),
                          ("llama.feed_forward_length", 172),
                          ("llama.attention.head_count", 8),
                          ("llama.attention.head_count_kv", 4),
                          ("llama.context_length", 2048),
                          ("tokenizer.ggml.bos_token_id", 1),
                          ("tokenizer.ggml.eos_token_id", 2),
                          ("tokenizer.ggml.unknown_token_id", 0)]:
            self.assertEqual(g.get(key), want, key)
        self.assertAlmostEqual(g.get("llama.attention.layer_norm_rms_epsilon"), 1e-5, places=10)
        self.assertEqual(len(g.get("tokenizer.ggml.tokens")), 512)
        self.assertEqual(len(g.get("tokenizer.ggml.scores")), 512)
        self.assertEqual(g.get("tokenizer.ggml.tokens")[:3], ["<unk>", "<s>", "</s>"])

        dims = {"token_embd.weight": (64, 512), "output.weight": (64, 512),
                "output_norm.weight": (64,)}
        for i in range(5):
            p = f"blk.{i}."
            dims.update({p + "attn_norm.weight": (64,), p + "ffn_norm.weight": (64,),
                         p + "attn_q.weight": (64, 64), p + "attn_k.weight": (64, 32),
                         p + "attn_v.weight": (64, 32), p + "attn_output.weight": (64, 64),
                         p + "ffn_gate.weight": (64, 172), p + "ffn_up.weight": (64, 172),
                         p + "ffn_down.weight": (172, 64)})
        self.assertEqual(set(g.tensors), set(dims))
        end = 0
        for name, t in g.tensors.items():
            self.assertEqual(t.dims, dims[name], name)
            self.assertEqual(t.type_name, "F32", name)
            self.assertEqual(t.offset % g.alignment, 0)
            end = max(end, g.data_offset + t.offset + t.n_bytes)
        self.assertEqual(g.data_offset % g.alignment, 0)
        self.assertEqual(end, os.path.getsize(STORIES))

        cfg = llama_ref.Config.from_gguf(g)
        self.assertEqual((cfg.head_dim, cfg.n_rot, cfg.vocab_size), (8, 8, 512))
        self.assertFalse(cfg.rope_neox)


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


def make_synthetic_qwen2(path, rng, tied=True, rope_factor=2.0):
    """A tiny random qwen2 model exercising biases, tied embeddings, linear RoPE
    scaling and quantized weights of every supported type."""
    dim, n_heads, n_kv, ffn, vocab, n_layers = 32, 4, 2, 256, 40, 2
    hd = dim // n_heads

    def f32(shape_np, scale=0.3):
        return (rng.standard_normal(shape_np) * scale).astype("<f4").tobytes()

    def quant(type_name, n_elems):
        raw, qk = random_blocks(rng, type_name, n_elems // gguf_py.GGML_TYPES[
            gguf_py.GGML_TYPE_BY_NAME[type_name]][1])
        return raw.tobytes()

    T = gguf_py.GGML_TYPE_BY_NAME
    tensors = [("token_embd.weight", (dim, vocab), 0, f32((vocab, dim), 1.0)),
               ("output_norm.weight", (dim,), 0, f32((dim,), 0.1) )]
    if not tied:
        tensors.append(("output.weight", (dim, vocab), 0, f32((vocab, dim))))
    for i in range(n_layers):
        p = f"blk.{i}."
        tensors += [
            (p + "attn_norm.weight", (dim,), 0, (1 + rng.standard_normal(dim) * 0.1).astype("<f4").tobytes()),
            (p + "attn_q.weight", (dim, dim), T["Q8_0"], quant("Q8_0", dim * dim)),
            (p + "attn_q.bias", (dim,), 0, f32((dim,))),
            (p + "attn_k.weight", (dim, n_kv * hd), T["Q4_0"], quant("Q4_0", dim * n_kv * hd)),
            (p + "attn_k.bias", (n_kv * hd,), 0, f32((n_kv * hd,))),
            (p + "attn_v.weight", (dim, n_kv * hd), T["F16"],
             (rng.standard_normal(dim * n_kv * hd) * 0.3).astype("<f2").tobytes()),
            (p + "attn_v.bias", (n_kv * hd,), 0, f32((n_kv * hd,))),
            (p + "attn_output.weight", (dim, dim), T["BF16"],
             ((rng.standard_normal(dim * dim) * 0.3).astype("<f4").view("<u4") >> 16)
             .astype("<u2").tobytes()),
            (p + "ffn_norm.weight", (dim,), 0, (1 + rng.standard_normal(dim) * 0.1).astype("<f4").tobytes()),
            (p + "ffn_gate.weight", (dim, ffn), 0, f32((ffn, dim))),
            (p + "ffn_up.weight", (dim, ffn), 0, f32((ffn, dim))),
            # ffn_down rows have ffn = 256 elements: room for one K-quant block each.
            (p + "ffn_down.weight", (ffn, dim), T["Q4_K" if i == 0 else "Q6_K"],
             quant("Q4_K" if i == 0 else "Q6_K", ffn * dim)),
        ]
    meta = [("general.architecture", T_STRING, "qwen2"),
            ("qwen2.embedding_length", T_UINT32, dim),
            ("qwen2.block_count", T_UINT32, n_layers),
            ("qwen2.feed_forward_length", T_UINT32, ffn),
            ("qwen2.attention.head_count", T_UINT32, n_heads),
            ("qwen2.attention.head_count_kv", T_UINT32, n_kv),
            ("qwen2.attention.layer_norm_rms_epsilon", T_FLOAT32, 1e-6),
            ("qwen2.rope.freq_base", T_FLOAT32, 1000000.0),
            ("qwen2.context_length", T_UINT32, 4096),
            ("tokenizer.ggml.model", T_STRING, "gpt2"),
            ("tokenizer.ggml.tokens", T_ARRAY, (T_STRING, [chr(ord("a") + i % 26) * (1 + i // 26)
                                                           for i in range(vocab)])),
            ("tokenizer.ggml.bos_token_id", T_UINT32, 0)]
    if rope_factor != 1.0:
        meta += [("qwen2.rope.scaling.type", T_STRING, "linear"),
                 ("qwen2.rope.scaling.factor", T_FLOAT32, rope_factor)]
    gguf_py.write(path, meta, tensors)


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
