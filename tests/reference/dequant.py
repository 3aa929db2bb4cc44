"""Dequantize ggml tensor data to float64, vectorized with numpy.

Each function mirrors ggml's dequantize_row_<type> (ggml-quants.c): same block layout,
same bit unpacking, and the same float32 arithmetic in the same order, so the values
equal ggml's (compiled without FMA contraction) bit for bit; only then are they widened
to float64. For F32/F16/BF16/Q4_0/Q8_0/Q6_K every product is exact in float32 anyway;
for Q4_K the final `d1*q - m1` can round in float32, and an FMA build of ggml may
differ from this by at most one float32 ulp on such elements.

All functions take raw bytes (a uint8 array, e.g. a memmap slice) and the number of
elements, and return a flat float64 array; `dequantize(info)` reshapes to numpy order.

Block layouts (little-endian, packed):
    Q4_0  (32 elems, 18 B): f16 d; u8 qs[16]
    Q8_0  (32 elems, 34 B): f16 d; i8 qs[32]
    Q4_K (256 elems, 144 B): f16 d; f16 dmin; u8 scales[12]; u8 qs[128]
    Q6_K (256 elems, 210 B): u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d
"""

import numpy as np

from gguf_py import GGML_TYPES, GGUFError

QK4_0 = 32
QK8_0 = 32
QK_K = 256


def _blocks(raw, n_elems: int, block_elems: int, block_bytes: int) -> np.ndarray:
    """View raw bytes as (n_blocks, block_bytes) uint8, checking the size."""
    if n_elems % block_elems:
        raise GGUFError(f"{n_elems} elements is not a multiple of block size {block_elems}")
    nb = n_elems // block_elems
    raw = np.asarray(raw, dtype=np.uint8).reshape(-1)
    if raw.size != nb * block_bytes:
        raise GGUFError(f"expected {nb * block_bytes} bytes for {n_elems} elements, "
                        f"got {raw.size}")
    return raw.reshape(nb, block_bytes)


def _f16(cols: np.ndarray) -> np.ndarray:
    """(nb, 2) uint8 little-endian half floats -> (nb,) float32 (exact widening)."""
    return np.ascontiguousarray(cols).view("<f2").reshape(-1).astype(np.float32)


def dequant_f32(raw, n: int) -> np.ndarray:
    return np.asarray(raw, dtype=np.uint8).reshape(-1)[: 4 * n].view("<f4").astype(np.float64)


def dequant_f16(raw, n: int) -> np.ndarray:
    return np.asarray(raw, dtype=np.uint8).reshape(-1)[: 2 * n].view("<f2").astype(np.float64)


def dequant_bf16(raw, n: int) -> np.ndarray:
    # bf16 is the top half of an IEEE float32.
    u16 = np.asarray(raw, dtype=np.uint8).reshape(-1)[: 2 * n].view("<u2")
    return (u16.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def dequant_q8_0(raw, n: int) -> np.ndarray:
    b = _blocks(raw, n, QK8_0, 34)                       # (nb, 34)
    d = _f16(b[:, 0:2])                                  # (nb,)
    qs = b[:, 2:34].view(np.int8).astype(np.float32)     # (nb, 32)
    return (qs * d[:, None]).astype(np.float64).reshape(-1)


def dequant_q4_0(raw, n: int) -> np.ndarray:
    b = _blocks(raw, n, QK4_0, 18)                       # (nb, 18)
    d = _f16(b[:, 0:2])                                  # (nb,)
    qs = b[:, 2:18]                                      # (nb, 16)
    # Element j < 16 is the low nibble of qs[j], element 16 + j the high nibble.
    lo = (qs & 0x0F).astype(np.int32) - 8                # (nb, 16)
    hi = (qs >> 4).astype(np.int32) - 8                  # (nb, 16)
    q = np.concatenate([lo, hi], axis=1).astype(np.float32)  # (nb, 32)
    return (q * d[:, None]).astype(np.float64).reshape(-1)


def q4_k_scale_min(scales: np.ndarray):
    """ggml's get_scale_min_k4 for all 8 sub-blocks at once.

    scales: (nb, 12) uint8 -> (sc, m) each (nb, 8) uint8, 6-bit values.
    Sub-blocks 0..3 keep their 6 bits in the low bits of bytes 0..3 (scale) and 4..7
    (min); sub-blocks 4..7 take a low nibble from bytes 8..11 and borrow the top two
    bits of bytes 0..3 (scale) / 4..7 (min).
    """
    s = scales.astype(np.uint8)
    sc = np.empty((s.shape[0], 8), dtype=np.uint8)
    m = np.empty((s.shape[0], 8), dtype=np.uint8)
    sc[:, 0:4] = s[:, 0:4] & 63
    m[:, 0:4] = s[:, 4:8] & 63
    sc[:, 4:8] = (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)
    m[:, 4:8] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc, m


def dequant_q4_k(raw, n: int) -> np.ndarray:
    b = _blocks(raw, n, QK_K, 144)                       # (nb, 144)
    nb = b.shape[0]
    d = _f16(b[:, 0:2])                                  # (nb,)
    dmin = _f16(b[:, 2:4])                               # (nb,)
    sc, m = q4_k_scale_min(b[:, 4:16])                   # (nb, 8) each
    d_sub = d[:, None] * sc.astype(np.float32)           # (nb, 8)  ggml: d1 = d * sc
    m_sub = dmin[:, None] * m.astype(np.float32)         # (nb, 8)  ggml: m1 = min * m
    # 4 chunks of 32 bytes; chunk c gives 64 outputs: 32 low nibbles (sub-block 2c)
    # then 32 high nibbles (sub-block 2c + 1).
    qs = b[:, 16:144].reshape(nb, 4, 32)                 # (nb, chunk, 32)
    q = np.stack([qs & 0x0F, qs >> 4], axis=2)           # (nb, chunk, nibble, 32)
    q = q.reshape(nb, 8, 32).astype(np.float32)          # (nb, sub-block, 32)
    y = d_sub[:, :, None] * q - m_sub[:, :, None]        # float32, ggml's order
    return y.astype(np.float64).reshape(-1)


def dequant_q6_k(raw, n: int) -> np.ndarray:
    b = _blocks(raw, n, QK_K, 210)                       # (nb, 210)
    nb = b.shape[0]
    ql = b[:, 0:128].reshape(nb, 2, 64)                  # (nb, half, 64)
    qh = b[:, 128:192].reshape(nb, 2, 32)                # (nb, half, 32)
    sc = b[:, 192:208].view(np.int8).reshape(nb, 2, 4, 2).astype(np.float32)  # (nb, half, k, l//16)
    d = _f16(b[:, 208:210])                              # (nb,)
    # Within each 128-element half, output 32*k + l (k = 0..3, l = 0..31) is built from
    #   low 4 bits: ql[l + 32*(k%2)], low nibble if k < 2 else high nibble
    #   high 2 bits: bits 2k..2k+1 of qh[l]
    # and uses scale sc[2k + l//16].
    lo = np.stack([ql[:, :, 0:32] & 0x0F, ql[:, :, 32:64] & 0x0F,
                   ql[:, :, 0:32] >> 4, ql[:, :, 32:64] >> 4], axis=2)  # (nb, half, k, 32)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8)[None, None, :, None]
    hi = (qh[:, :, None, :] >> shifts) & 3                               # (nb, half, k, 32)
    q = (lo.astype(np.int32) | (hi.astype(np.int32) << 4)) - 32          # in [-32, 31]
    q = q.reshape(nb, 2, 4, 2, 16).astype(np.float32)                    # split l by l//16
    # ggml: y = d * sc[is] * q, evaluated left to right in float32.
    y = (d[:, None, None, None, None] * sc[..., None]) * q               # (nb, 2, 4, 2, 16)
    return y.astype(np.float64).reshape(-1)


_DEQUANT = {
    "F32": dequant_f32,
    "F16": dequant_f16,
    "BF16": dequant_bf16,
    "Q8_0": dequant_q8_0,
    "Q4_0": dequant_q4_0,
    "Q4_K": dequant_q4_k,
    "Q6_K": dequant_q6_k,
}

SUPPORTED_TYPES = tuple(_DEQUANT)


def dequantize_raw(type_name: str, raw, n: int) -> np.ndarray:
    """Flat float64 array of n elements from raw bytes of the given ggml type."""
    try:
        fn = _DEQUANT[type_name]
    except KeyError:
        raise GGUFError(f"dequantization of {type_name} is not implemented "
                        f"(supported: {', '.join(SUPPORTED_TYPES)})") from None
    return fn(raw, n)


def dequantize(info) -> np.ndarray:
    """A gguf_py.TensorInfo -> float64 array in numpy order (ggml {in, out} -> (out, in))."""
    name = GGML_TYPES[info.ggml_type][0]
    return dequantize_raw(name, info.data, info.n_elements).reshape(info.np_shape)
