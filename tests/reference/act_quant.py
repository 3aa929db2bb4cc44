"""Emulation of ggml's activation quantization, for the reference forward pass.

ggml (and sinkserve's CPU kernels, which follow it) multiply a quantized weight
matrix by activations that are first quantized themselves, row by row:

  * Q8_0 and Q4_0 weights: activations as Q8_0 -- blocks of 32, scale
    d = amax / 127 in float32, quants round(x * (1/d)) rounding half away from
    zero (C's roundf), and the scale *stored as F16*, which is the d the dot
    product uses;
  * Q4_K and Q6_K weights: activations as Q8_K -- blocks of 256, the
    first element of largest magnitude `max` (sign kept), iscale = -127 / max,
    quants nearest_int(iscale * x) (round half to even) capped at 127, and the
    scale d = 1 / iscale kept in float32. (The per-16 sums ggml stores with a
    Q8_K block are sums of these quants: they only regroup the same products.)

Each integer dot product sum_b dw_b * da_b * sum_j qw_j qa_j equals the dot of
the dequantized weight row with the dequantized activation row da * qa. So the
reference reproduces the kernels' result by replacing each activation row with
its quantize -> dequantize image and multiplying in float64 as usual.

The rounding steps are done in float32, as the C code does them; everything
after (the dequantized values, the products) is float64. Written from ggml's
`quantize_row_q8_0_ref` / `quantize_row_q8_K_ref` definitions, not from
sinkserve's C++.
"""

import numpy as np

F32 = np.float32


def _roundf(v: np.ndarray) -> np.ndarray:
    """C's roundf (half away from zero) of float32 values, exactly."""
    # floor(|v| + 0.5) can round up wrongly in float32 arithmetic (0.49999997 +
    # 0.5 == 1.0f); in float64 the sum is exact for |v| < 2^24, which holds
    # here (|v| <= 127.5).
    a = np.abs(v.astype(np.float64))
    return np.sign(v).astype(np.float64) * np.floor(a + 0.5)


def _q8_0_scaled(x: np.ndarray):
    """Rows x (..., n), n a multiple of 32 -> (blocks of x * (1/d) in float32,
    (blocks, 32); the scales d as stored, F16 rounded, float64 (blocks,))."""
    x32 = np.asarray(x, dtype=np.float64).astype(F32)
    if x32.shape[-1] % 32:
        raise ValueError(f"Q8_0 activations need a multiple of 32 columns, got {x32.shape[-1]}")
    b = x32.reshape(-1, 32)                                   # (blocks, 32)
    amax = np.max(np.abs(b), axis=1)                          # (blocks,) float32
    d = (amax / F32(127)).astype(F32)                         # float32 division
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, F32(1) / np.where(d != 0, d, F32(1)), F32(0)).astype(F32)
    prod = (b * inv[:, None]).astype(F32)                     # float32 product
    d16 = d.astype(np.float16).astype(np.float64)             # scale as stored (F16, RNE)
    return prod, d16


def _quantize(x: np.ndarray, scaled, rounding):
    """(x quantized and dequantized, float64 of x's shape; the scaled values
    that were rounded, float32 (blocks, block size))."""
    prod, d = scaled(x)
    return (rounding(prod) * d[:, None]).reshape(np.shape(x)), prod


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    """Rows x (..., n), n a multiple of 32 -> float64 values d16 * q, as a
    Q8_0-quantized copy would dequantize."""
    return _quantize(x, _q8_0_scaled, _roundf)[0]


def _nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: round half to even (v float32, |v| small)."""
    return np.rint(v.astype(np.float64))


def _round_q8_k(prod: np.ndarray) -> np.ndarray:
    return np.minimum(_nearest_int(prod), 127)


def _q8_k_scaled(x: np.ndarray):
    """Rows x (..., n), n a multiple of 256 -> (blocks of iscale * x in float32,
    (blocks, 256), zero for an all-zero block; d = 1 / iscale, float64 (blocks,))."""
    x32 = np.asarray(x, dtype=np.float64).astype(F32)
    if x32.shape[-1] % 256:
        raise ValueError(f"Q8_K activations need a multiple of 256 columns, got {x32.shape[-1]}")
    b = x32.reshape(-1, 256)                                  # (blocks, 256)
    first = np.argmax(np.abs(b), axis=1)                      # first of largest |x|
    mx = b[np.arange(len(b)), first]                          # (blocks,) signed
    prod = np.zeros(b.shape, dtype=F32)
    d = np.zeros(len(b), dtype=np.float64)
    nz = mx != 0
    iscale = (F32(-127) / mx[nz]).astype(F32)                 # float32 division
    prod[nz] = (b[nz] * iscale[:, None]).astype(F32)
    d[nz] = (F32(1) / iscale).astype(F32).astype(np.float64)
    return prod, d


def quantize_q8_k(x: np.ndarray) -> np.ndarray:
    """Rows x (..., n), n a multiple of 256 -> float64 values d * q, as a
    Q8_K-quantized copy would dequantize."""
    return _quantize(x, _q8_k_scaled, _round_q8_k)[0]


# A scaled value within this fraction of its magnitude (4-8 float32 ulps) of a
# rounding boundary (k + 1/2) may round to either side in two correct
# implementations: their float32 activations differ in the last bits (1e-7
# relative), and which side wins is noise. One such quant moving by a step in
# a middle layer moves that position's logits by up to ~1e-2 of their max.
TIE_BAND = 5e-7


def _near_boundary(prod: np.ndarray) -> np.ndarray:
    a = np.abs(prod.astype(np.float64))
    return np.abs(a - np.floor(a) - 0.5) <= TIE_BAND * np.maximum(a, 1.0)


# Weight type -> (scaling, rounding) of the activation quantizer its kernels
# use. Float weight types (F32, F16, BF16) take the activations as they are.
_QUANTIZER = {
    "Q8_0": (_q8_0_scaled, _roundf),
    "Q4_0": (_q8_0_scaled, _roundf),
    "Q4_K": (_q8_k_scaled, _round_q8_k),
    "Q6_K": (_q8_k_scaled, _round_q8_k),
}


def quantize_marking_ties(x: np.ndarray, weight_type: str):
    """x (rows, n) as the kernels for `weight_type` see it (unchanged for
    float types), and (rows,) bool: which rows have a value quantized within
    TIE_BAND of a rounding boundary."""
    x = np.asarray(x, dtype=np.float64)
    rows = x.shape[0]
    if weight_type not in _QUANTIZER:
        return x, np.zeros(rows, dtype=bool)
    values, prod = _quantize(x, *_QUANTIZER[weight_type])
    return values, _near_boundary(prod).reshape(rows, -1).any(axis=1)


def quantize_activations(x: np.ndarray, weight_type: str) -> np.ndarray:
    """x as the kernels for `weight_type` see it (unchanged for float types)."""
    return quantize_marking_ties(x, weight_type)[0]


def near_tie_rows(x: np.ndarray, weight_type: str) -> np.ndarray:
    """(rows,) bool: which rows of x (rows, n) have a value the kernels for
    `weight_type` quantize within TIE_BAND of a rounding boundary (none for
    float types)."""
    return quantize_marking_ties(x, weight_type)[1]
