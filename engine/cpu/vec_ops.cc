#include "engine/cpu/vec_ops.h"

#include <cmath>
#include <cstddef>
#include <limits>

#include "engine/gguf/fp16.h"

// Highway re-includes this file once per instruction set (foreach_target.h);
// everything between HWY_BEFORE_NAMESPACE and HWY_AFTER_NAMESPACE is compiled
// for each, and the HWY_ONCE section dispatches to the best one at run time.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "engine/cpu/vec_ops.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/contrib/math/math-inl.h"

HWY_BEFORE_NAMESPACE();
namespace sinkserve::engine {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;

float DotImpl(const float* a, const float* b, int64_t n) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  // Four accumulators hide the FMA latency.
  auto s0 = hn::Zero(d), s1 = hn::Zero(d), s2 = hn::Zero(d), s3 = hn::Zero(d);
  int64_t i = 0;
  for (; i + 4 * N <= n; i += 4 * N) {
    s0 = hn::MulAdd(hn::LoadU(d, a + i), hn::LoadU(d, b + i), s0);
    s1 = hn::MulAdd(hn::LoadU(d, a + i + N), hn::LoadU(d, b + i + N), s1);
    s2 = hn::MulAdd(hn::LoadU(d, a + i + 2 * N), hn::LoadU(d, b + i + 2 * N), s2);
    s3 = hn::MulAdd(hn::LoadU(d, a + i + 3 * N), hn::LoadU(d, b + i + 3 * N), s3);
  }
  for (; i + N <= n; i += N) {
    s0 = hn::MulAdd(hn::LoadU(d, a + i), hn::LoadU(d, b + i), s0);
  }
  float sum = hn::GetLane(hn::SumOfLanes(d, hn::Add(hn::Add(s0, s1), hn::Add(s2, s3))));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

void AxpyImpl(float alpha, const float* x, float* y, int64_t n) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const auto va = hn::Set(d, alpha);
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    hn::StoreU(hn::MulAdd(va, hn::LoadU(d, x + i), hn::LoadU(d, y + i)), d, y + i);
  }
  for (; i < n; ++i) y[i] += alpha * x[i];
}

void ScaleImpl(float* x, float s, int64_t n) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const auto vs = hn::Set(d, s);
  int64_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(hn::Mul(hn::LoadU(d, x + i), vs), d, x + i);
  for (; i < n; ++i) x[i] *= s;
}

void AddImpl(const float* a, const float* b, float* out, int64_t n) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    hn::StoreU(hn::Add(hn::LoadU(d, a + i), hn::LoadU(d, b + i)), d, out + i);
  }
  for (; i < n; ++i) out[i] = a[i] + b[i];
}

double SumSquaresImpl(const float* x, int64_t n) {
  const hn::ScalableTag<double> dd;
  const hn::Rebind<float, decltype(dd)> df;  // half a vector of floats
  const int64_t N = static_cast<int64_t>(hn::Lanes(dd));
  auto s0 = hn::Zero(dd), s1 = hn::Zero(dd);
  int64_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    const auto v0 = hn::PromoteTo(dd, hn::LoadU(df, x + i));
    const auto v1 = hn::PromoteTo(dd, hn::LoadU(df, x + i + N));
    s0 = hn::MulAdd(v0, v0, s0);
    s1 = hn::MulAdd(v1, v1, s1);
  }
  double sum = hn::GetLane(hn::SumOfLanes(dd, hn::Add(s0, s1)));
  for (; i < n; ++i) sum += static_cast<double>(x[i]) * x[i];
  return sum;
}

void RmsNormImpl(const float* x, const float* w, int64_t n, float eps, float* out) {
  if (n <= 0) return;
  const double ss = SumSquaresImpl(x, n);
  const float scale = static_cast<float>(1.0 / std::sqrt(ss / n + eps));
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const auto vs = hn::Set(d, scale);
  int64_t i = 0;
  if (w == nullptr) {
    for (; i + N <= n; i += N) hn::StoreU(hn::Mul(hn::LoadU(d, x + i), vs), d, out + i);
    for (; i < n; ++i) out[i] = x[i] * scale;
    return;
  }
  for (; i + N <= n; i += N) {
    hn::StoreU(hn::Mul(hn::Mul(hn::LoadU(d, x + i), vs), hn::LoadU(d, w + i)), d, out + i);
  }
  for (; i < n; ++i) out[i] = x[i] * scale * w[i];
}

float MaxValueImpl(const float* x, int64_t n) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  float m = -std::numeric_limits<float>::infinity();
  int64_t i = 0;
  if (n >= N) {
    auto vm = hn::LoadU(d, x);
    for (i = N; i + N <= n; i += N) vm = hn::Max(vm, hn::LoadU(d, x + i));
    m = hn::GetLane(hn::MaxOfLanes(d, vm));
  }
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

// sum_i exp(x[i] - max); also stores the exponentials when `out` is set.
float SumExp(const float* x, float max, int64_t n, float* out) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const auto vmax = hn::Set(d, max);
  auto sum = hn::Zero(d);
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    const auto e = hn::Exp(d, hn::Sub(hn::LoadU(d, x + i), vmax));
    if (out != nullptr) hn::StoreU(e, d, out + i);
    sum = hn::Add(sum, e);
  }
  float s = hn::GetLane(hn::SumOfLanes(d, sum));
  for (; i < n; ++i) {
    const float e = std::exp(x[i] - max);
    if (out != nullptr) out[i] = e;
    s += e;
  }
  return s;
}

void SoftmaxImpl(float* x, int64_t n) {
  if (n <= 0) return;
  const float max = MaxValueImpl(x, n);
  const float sum = SumExp(x, max, n, x);
  ScaleImpl(x, 1.0f / sum, n);
}

float LogSumExpImpl(const float* x, int64_t n) {
  if (n <= 0) return -std::numeric_limits<float>::infinity();
  const float max = MaxValueImpl(x, n);
  if (std::isinf(max)) return max;  // all -inf, or an inf that dominates
  return max + std::log(SumExp(x, max, n, nullptr));
}

void SiluMulImpl(float* gate, const float* up, int64_t n) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const auto one = hn::Set(d, 1.0f);
  // exp(88) is near FLT_MAX; beyond it Highway's Exp is undefined, and
  // silu(g) for g < -88 is 0 to float precision anyway.
  const auto clamp = hn::Set(d, 88.0f);
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    const auto g = hn::LoadU(d, gate + i);
    const auto e = hn::Exp(d, hn::Min(hn::Neg(g), clamp));
    const auto silu = hn::Div(g, hn::Add(one, e));
    hn::StoreU(hn::Mul(silu, hn::LoadU(d, up + i)), d, gate + i);
  }
  for (; i < n; ++i) {
    const float g = gate[i];
    gate[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

// F16 bits -> float, exact for every number (subnormals, inf); NaN stays NaN.
void HalfToFloatRowImpl(const uint16_t* in, float* out, int64_t n) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  int64_t i = 0;
#if HWY_TARGET <= HWY_AVX2
  // F16C converts exactly in hardware.
  const hn::Rebind<hwy::float16_t, DF> dh;
  const auto* h = reinterpret_cast<const hwy::float16_t*>(in);
  for (; i + N <= n; i += N) hn::StoreU(hn::PromoteTo(d, hn::LoadU(dh, h + i)), d, out + i);
#else
  // Highway's emulation here maps inf/NaN to finite values; instead place the
  // exponent and mantissa in float position and rescale by 2^112, which is
  // exact for normals and subnormals alike, then patch exponent 31.
  const hn::RebindToUnsigned<DF> du;
  const hn::RebindToSigned<DF> di;
  const hn::Rebind<uint16_t, DF> du16;
  const auto magic = hn::Set(d, 5.192296858534828e33f);  // 2^112
  for (; i + N <= n; i += N) {
    const auto bits = hn::PromoteTo(du, hn::LoadU(du16, in + i));
    const auto em = hn::ShiftLeft<13>(hn::And(bits, hn::Set(du, 0x7fffu)));
    const auto sign = hn::ShiftLeft<16>(hn::And(bits, hn::Set(du, 0x8000u)));
    auto mag = hn::BitCast(du, hn::Mul(hn::BitCast(d, em), magic));
    // Exponent 31; a signed compare (no unsigned one on SSE4), em < 2^28.
    const auto inf_nan = hn::Gt(hn::BitCast(di, em), hn::Set(di, 0x0f7fffff));
    mag = hn::IfThenElse(hn::RebindMask(du, inf_nan),
                         hn::Or(em, hn::Set(du, 0x70000000u)), mag);
    hn::StoreU(hn::BitCast(d, hn::Or(mag, sign)), d, out + i);
  }
#endif
  for (; i < n; ++i) out[i] = HalfToFloat(in[i]);
}

// BF16 bits -> float: the upper half of the float's bits, so exact.
void Bf16ToFloatRowImpl(const uint16_t* in, float* out, int64_t n) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const hn::RebindToUnsigned<DF> du;
  const hn::Rebind<uint16_t, DF> du16;
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    const auto bits = hn::PromoteTo(du, hn::LoadU(du16, in + i));
    hn::StoreU(hn::BitCast(d, hn::ShiftLeft<16>(bits)), d, out + i);
  }
  for (; i < n; ++i) out[i] = Bf16ToFloat(in[i]);
}

int64_t TargetImpl() { return HWY_TARGET; }

}  // namespace HWY_NAMESPACE
}  // namespace sinkserve::engine
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace sinkserve::engine {

HWY_EXPORT(DotImpl);
HWY_EXPORT(AxpyImpl);
HWY_EXPORT(ScaleImpl);
HWY_EXPORT(AddImpl);
HWY_EXPORT(SumSquaresImpl);
HWY_EXPORT(RmsNormImpl);
HWY_EXPORT(MaxValueImpl);
HWY_EXPORT(SoftmaxImpl);
HWY_EXPORT(LogSumExpImpl);
HWY_EXPORT(SiluMulImpl);
HWY_EXPORT(HalfToFloatRowImpl);
HWY_EXPORT(Bf16ToFloatRowImpl);
HWY_EXPORT(TargetImpl);

float Dot(const float* a, const float* b, int64_t n) {
  return HWY_DYNAMIC_DISPATCH(DotImpl)(a, b, n);
}
void Axpy(float alpha, const float* x, float* y, int64_t n) {
  HWY_DYNAMIC_DISPATCH(AxpyImpl)(alpha, x, y, n);
}
void Scale(float* x, float s, int64_t n) { HWY_DYNAMIC_DISPATCH(ScaleImpl)(x, s, n); }
void Add(const float* a, const float* b, float* out, int64_t n) {
  HWY_DYNAMIC_DISPATCH(AddImpl)(a, b, out, n);
}
double SumSquares(const float* x, int64_t n) {
  return HWY_DYNAMIC_DISPATCH(SumSquaresImpl)(x, n);
}
void RmsNorm(const float* x, const float* w, int64_t n, float eps, float* out) {
  HWY_DYNAMIC_DISPATCH(RmsNormImpl)(x, w, n, eps, out);
}
float MaxValue(const float* x, int64_t n) { return HWY_DYNAMIC_DISPATCH(MaxValueImpl)(x, n); }
void Softmax(float* x, int64_t n) { HWY_DYNAMIC_DISPATCH(SoftmaxImpl)(x, n); }
float LogSumExp(const float* x, int64_t n) {
  return HWY_DYNAMIC_DISPATCH(LogSumExpImpl)(x, n);
}
void SiluMul(float* gate, const float* up, int64_t n) {
  HWY_DYNAMIC_DISPATCH(SiluMulImpl)(gate, up, n);
}
void HalfToFloatRow(const uint16_t* in, float* out, int64_t n) {
  HWY_DYNAMIC_DISPATCH(HalfToFloatRowImpl)(in, out, n);
}
void Bf16ToFloatRow(const uint16_t* in, float* out, int64_t n) {
  HWY_DYNAMIC_DISPATCH(Bf16ToFloatRowImpl)(in, out, n);
}
const char* VecOpsTarget() { return hwy::TargetName(HWY_DYNAMIC_DISPATCH(TargetImpl)()); }

}  // namespace sinkserve::engine
#endif  // HWY_ONCE
