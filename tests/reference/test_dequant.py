"""Dequantization in the numpy reference: hand-made blocks with known values,
and the vectorized code against a line-by-line transliteration of ggml's loops.
"""

import os
import struct
import sys
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dequant  # noqa: E402
import gguf_py  # noqa: E402
from ref_testutil import f16_bytes, random_blocks  # noqa: E402


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


if __name__ == "__main__":
    unittest.main()
