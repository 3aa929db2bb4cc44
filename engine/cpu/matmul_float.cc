// The float-weight matmul kernels (F32, F16, BF16) and the activation
// quantizers (Q8_0, Q8_K), written once in Highway and compiled for every x86
// target by foreach_target; MatMul takes the AVX2 and AVX-512 copies and,
// for its portable set, Highway's baseline (HwyFloatKernels). The quantized-weight products stay in
// intrinsics (matmul_avx2.cc, matmul_avx512_*.cc): Highway 1.0.3 has no int8 dot product.
//
// This file is its own HWY_TARGET_INCLUDE: everything between
// HWY_BEFORE_NAMESPACE and HWY_AFTER_NAMESPACE is compiled once per target.
#include <cstdint>
#include <cstring>

#include "engine/cpu/matmul_internal.h"
#include "engine/gguf/fp16.h"
#include "engine/gguf/quant_blocks.h"

// Only the targets MatMul can pick, plus Highway's baseline (always built).
#ifndef HWY_DISABLED_TARGETS
#define HWY_DISABLED_TARGETS (HWY_SSSE3 | HWY_SSE4 | HWY_AVX3_DL)
#endif
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "engine/cpu/matmul_float.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace sinkserve::engine::matmul_internal {
namespace HWY_NAMESPACE {
namespace {

namespace hn = hwy::HWY_NAMESPACE;

#include "engine/cpu/matmul_kernels-inl.h"

using DF = hn::ScalableTag<float>;
constexpr size_t kMaxLanes = hn::MaxLanes(DF());

// The first `rest` (< a vector) floats at p, zeros after them. A masked load
// where it cannot fault (a function call here would cost the tile its
// registers), else a padded copy.
hn::Vec<DF> FloatTail(const float* p, size_t rest) {
  const DF df;
#if HWY_TARGET <= HWY_AVX2
  return hn::MaskedLoad(hn::FirstN(df, rest), df, p);
#else
  HWY_ALIGN float pad[kMaxLanes] = {};
  std::memcpy(pad, p, rest * sizeof(float));
  return hn::Load(df, pad);
#endif
}

// The same for 16-bit weights widened to floats (exactly, as the vector
// conversions do): AVX2 has no 16-bit masked load, and a conversion loop is
// not turned into a memcpy call.
template <float (*kToFloat)(uint16_t)>
hn::Vec<DF> HalfTail(const uint16_t* p, size_t rest) {
  HWY_ALIGN float pad[kMaxLanes] = {};
  for (size_t k = 0; k < rest; ++k) pad[k] = kToFloat(p[k]);
  return hn::Load(DF(), pad);
}

// The sum of v's lanes by halving down to 128 bits: SumOfLanes on a wide
// vector broadcasts its result back across the vector, an extra shuffle per
// output that a tile of 16 outputs feels.
template <class D>
float SumLanes(D d, hn::Vec<D> v) {
#if HWY_TARGET != HWY_SCALAR
  if constexpr (hn::MaxLanes(D()) * sizeof(float) > 16) {
    const hn::Half<D> dh;
    return SumLanes(dh, hn::Add(hn::LowerHalf(dh, v), hn::UpperHalf(dh, v)));
  }
#endif
  return hn::GetLane(hn::SumOfLanes(d, v));
}

// Weight rows of each float type, widened to float vectors: Load reads a
// whole vector, Tail the last `rest` values of a row.
struct LoadF32 {
  using T = float;
  static hn::Vec<DF> Load(const float* p) { return hn::LoadU(DF(), p); }
  static hn::Vec<DF> Tail(const float* p, size_t rest) { return FloatTail(p, rest); }
};
struct LoadF16 {
  using T = uint16_t;  // F16 bits
  static hn::Vec<DF> Load(const uint16_t* p) {
    const hn::Rebind<hwy::float16_t, DF> dh;
    return hn::PromoteTo(DF(), hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(p)));
  }
  static hn::Vec<DF> Tail(const uint16_t* p, size_t rest) { return HalfTail<HalfToFloat>(p, rest); }
};
struct LoadBF16 {
  using T = uint16_t;  // the upper half of a float's bits
  static hn::Vec<DF> Load(const uint16_t* p) {
    const hn::RebindToUnsigned<DF> du;
    const auto bits = hn::PromoteTo(du, hn::LoadU(hn::Rebind<uint16_t, DF>(), p));
    return hn::BitCast(DF(), hn::ShiftLeft<16>(bits));
  }
  static hn::Vec<DF> Tail(const uint16_t* p, size_t rest) { return HalfTail<Bf16ToFloat>(p, rest); }
};

// R rows x T tokens of FMAs, one vector of columns at a time; F16/BF16
// weights are widened once per row and used for all T tokens. A ragged end
// of the row is zero-padded to a whole vector, so every output is the same
// sequence of operations whichever tile computes it.
template <class L>
struct FloatKernel {
  static constexpr int kRows = 4;
  static constexpr bool kRaggedRows = false;
  // 4 x T accumulators, T activations and a weight vector must fit the
  // register file: 32 vectors on AVX-512, 16 below it.
  static constexpr int kTokens = HWY_TARGET <= HWY_AVX3 ? 4 : 2;
  template <int R, int T>
  static void Tile(const WeightMatrix& w, const Activations& a, int64_t r, int64_t t, float* y,
                   int64_t ldy) {
    using WT = typename L::T;
    const DF df;
    const int64_t n = static_cast<int64_t>(hn::Lanes(df));
    const int64_t cols = a.cols;
    const int64_t whole = cols / n * n;
    const WT* wr[R];
    const float* x[T];
    SINKSERVE_UNROLL
    for (int i = 0; i < R; ++i) wr[i] = reinterpret_cast<const WT*>(w.data + (r + i) * w.row_bytes);
    SINKSERVE_UNROLL
    for (int j = 0; j < T; ++j) x[j] = a.f32 + (t + j) * cols;
    hn::Vec<DF> acc[R][T];
    SINKSERVE_UNROLL
    for (int i = 0; i < R; ++i) {
      SINKSERVE_UNROLL
      for (int j = 0; j < T; ++j) acc[i][j] = hn::Zero(df);
    }
    NextTilePrefetcher pf(w, r, R, cols / n);
    for (int64_t c = 0; c < whole; c += n) {
      pf.Step();
      hn::Vec<DF> xv[T];
      SINKSERVE_UNROLL
      for (int j = 0; j < T; ++j) xv[j] = hn::LoadU(df, x[j] + c);
      SINKSERVE_UNROLL
      for (int i = 0; i < R; ++i) {
        const hn::Vec<DF> wv = L::Load(wr[i] + c);
        SINKSERVE_UNROLL
        for (int j = 0; j < T; ++j) acc[i][j] = hn::MulAdd(wv, xv[j], acc[i][j]);
      }
    }
    if (whole < cols) {
      const size_t rest = static_cast<size_t>(cols - whole);
      hn::Vec<DF> xv[T];
      SINKSERVE_UNROLL
      for (int j = 0; j < T; ++j) xv[j] = FloatTail(x[j] + whole, rest);
      SINKSERVE_UNROLL
      for (int i = 0; i < R; ++i) {
        const hn::Vec<DF> wv = L::Tail(wr[i] + whole, rest);
        SINKSERVE_UNROLL
        for (int j = 0; j < T; ++j) acc[i][j] = hn::MulAdd(wv, xv[j], acc[i][j]);
      }
    }
    SINKSERVE_UNROLL
    for (int i = 0; i < R; ++i) {
      SINKSERVE_UNROLL
      for (int j = 0; j < T; ++j) y[(t + j) * ldy + r + i] = SumLanes(df, acc[i][j]);
    }
  }
};

// ------------------------------------------------------- quantization
// At most 16 lanes: a Q8_K sub-block sum covers 16 values.
using DQ = hn::CappedTag<float, 16>;

float MaxAbs(const float* x, int64_t n) {
  const DQ d;
  auto m = hn::Zero(d);
  for (int64_t k = 0; k < n; k += static_cast<int64_t>(hn::Lanes(d))) {
    m = hn::Max(m, hn::Abs(hn::LoadU(d, x + k)));
  }
  return hn::GetLane(hn::MaxOfLanes(d, m));
}

// An integral float of magnitude below 2^22 as int32: adding 1.5 * 2^23
// lands it in the low mantissa bits (ggml's nearest_int). Cheaper than
// ConvertTo, which pays a fix-up for out-of-range lanes these never have; a
// non-integral v rounds to nearest, ties to even, as nearest_int does.
hn::Vec<hn::RebindToSigned<DQ>> SmallToInt(hn::Vec<DQ> v) {
  const DQ d;
  const hn::RebindToSigned<DQ> di;
  return hn::Sub(hn::BitCast(di, hn::Add(v, hn::Set(d, 12582912.0f))), hn::Set(di, 0x4B400000));
}

// v rounded half away from zero (std::round in QuantizeRowQ8_0), as int32.
hn::Vec<hn::RebindToSigned<DQ>> RoundAway(hn::Vec<DQ> v) {
  const DQ d;
  const auto t = hn::Trunc(v);
  const auto up = hn::Ge(hn::Abs(hn::Sub(v, t)), hn::Set(d, 0.5f));
  const auto away = hn::Add(t, hn::CopySign(hn::Set(d, 1.0f), v));
  return SmallToInt(hn::IfThenElse(up, away, t));
}

// v rounded to the nearest F16, as ggml stores a Q8_0 scale.
float RoundToHalf(float v) {
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
  // F16C vcvtps2ph rounds to nearest even, as FloatToHalf does, at a tenth
  // of the software conversion's cost (Q8_0 quantization was 2x slower).
  const hn::CappedTag<float, 1> d;
  const hn::Rebind<hwy::float16_t, decltype(d)> dh;
  return hn::GetLane(hn::PromoteTo(d, hn::DemoteTo(dh, hn::Set(d, v))));
#else
  return HalfToFloat(FloatToHalf(v));
#endif
}

void QuantizeQ8_0(const float* x, int64_t cols, int8_t* qs, float* d, int32_t* neg_sums) {
  const DQ df;
  const hn::RebindToSigned<DQ> di;
  const hn::Rebind<int8_t, DQ> d8;
  const int64_t n = static_cast<int64_t>(hn::Lanes(df));
  for (int64_t b = 0; b < cols / kQK8_0; ++b) {
    const float* xb = x + kQK8_0 * b;
    const float dd = MaxAbs(xb, kQK8_0) / 127.0f;
    const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
    d[b] = RoundToHalf(dd);
    const auto vid = hn::Set(df, id);
    auto sum = hn::Zero(di);
    for (int64_t k = 0; k < kQK8_0; k += n) {
      const auto q = RoundAway(hn::Mul(hn::LoadU(df, xb + k), vid));
      hn::StoreU(hn::DemoteTo(d8, q), d8, qs + kQK8_0 * b + k);
      sum = hn::Add(sum, q);
    }
    neg_sums[b] = -hn::GetLane(hn::SumOfLanes(di, sum));
  }
}

void QuantizeQ8_K(const float* x, int64_t cols, int8_t* qs, float* d, int16_t* bsums,
                  float* dsums) {
  const DQ df;
  const hn::RebindToSigned<DQ> di;
  const hn::Rebind<int8_t, DQ> d8;
  const int64_t n = static_cast<int64_t>(hn::Lanes(df));
  for (int64_t b = 0; b < cols / kQK_K; ++b) {
    const float* xb = x + b * kQK_K;
    const float amax = MaxAbs(xb, kQK_K);
    int8_t* q = qs + b * kQK_K;
    int16_t* bs = bsums + b * (kQK_K / 16);
    float* ds = dsums + b * (kQK_K / 32);
    if (amax == 0.0f) {
      d[b] = 0.0f;
      std::memset(q, 0, kQK_K);
      std::memset(bs, 0, kQK_K / 16 * sizeof(int16_t));
      for (int k = 0; k < kQK_K / 32; ++k) ds[k] = 0.0f;
      continue;
    }
    float max = 0.0f;  // the first value of largest magnitude, sign included
    for (int k = 0; k < kQK_K; ++k) {
      if (xb[k] == amax || xb[k] == -amax) {
        max = xb[k];
        break;
      }
    }
    const float iscale = -127.0f / max;
    const auto vs = hn::Set(df, iscale);
    const auto cap = hn::Set(di, 127);
    for (int k = 0; k < kQK_K / 16; ++k) {
      auto sum = hn::Zero(di);
      for (int64_t j = 16 * k; j < 16 * k + 16; j += n) {
        const auto v = hn::Min(SmallToInt(hn::Mul(hn::LoadU(df, xb + j), vs)), cap);
        hn::StoreU(hn::DemoteTo(d8, v), d8, q + j);
        sum = hn::Add(sum, v);
      }
      bs[k] = static_cast<int16_t>(hn::GetLane(hn::SumOfLanes(di, sum)));
    }
    d[b] = 1.0f / iscale;
    for (int k = 0; k < kQK_K / 32; ++k) {
      ds[k] = d[b] * static_cast<float>(bs[2 * k] + bs[2 * k + 1]);
    }
  }
}

}  // namespace

const FloatKernels* Kernels() {
  static const FloatKernels kKernels = {
      QuantizeQ8_0,
      QuantizeQ8_K,
      RunGemm<FloatKernel<LoadF32>>,
      RunGemm<FloatKernel<LoadF16>>,
      RunGemm<FloatKernel<LoadBF16>>,
  };
  return &kKernels;
}

}  // namespace HWY_NAMESPACE
}  // namespace sinkserve::engine::matmul_internal
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace sinkserve::engine::matmul_internal {

const FloatKernels* HwyFloatKernels(Isa isa) {
  switch (isa) {
#if HWY_TARGETS & HWY_AVX2
    case Isa::kAvx2:
      return N_AVX2::Kernels();
#endif
#if HWY_TARGETS & HWY_AVX3
    case Isa::kAvx512:
      return N_AVX3::Kernels();
#endif
    case Isa::kScalar:
      return HWY_STATIC_DISPATCH(Kernels)();
    default:
      return nullptr;
  }
}

}  // namespace sinkserve::engine::matmul_internal
#endif  // HWY_ONCE
