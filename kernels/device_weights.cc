#include "kernels/device_weights.h"

#include "absl/strings/str_cat.h"
#include "kernels/cuda_check.h"
#include "memory/status_macros.h"

namespace sinkserve::kernels {

absl::StatusOr<DeviceMatrix> DeviceWeights::Matrix(const engine::WeightMatrix& w,
                                                   const DeviceContext& ctx) {
  using engine::GgmlType;
  switch (w.type->type) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_K:
    case GgmlType::kQ6_K:
      break;
    default:
      return absl::UnimplementedError(absl::StrCat(
          "the CUDA backend cannot load weights of type ",
          absl::string_view(w.type->name.data(), w.type->name.size())));
  }
  const size_t raw = static_cast<size_t>(w.rows) * w.row_bytes;
  const size_t bytes = static_cast<size_t>(w.rows) * w.cols * DTypeBytes(dtype_);
  SINKSERVE_RETURN_IF_ERROR(staging_.Reserve(raw));
  DeviceBuffer out;
  SINKSERVE_RETURN_IF_ERROR(out.Reserve(bytes));
  // Pageable source: the copy returns once the bytes are staged, so the
  // mapping may be dropped; the conversion runs in stream order after it.
  SINKSERVE_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(staging_.get(), w.data, raw, cudaMemcpyHostToDevice, ctx.stream()));
  SINKSERVE_CUDA_RETURN_IF_ERROR(LaunchDequantize(static_cast<uint32_t>(w.type->type),
                                                  staging_.get(), w.rows, w.cols,
                                                  w.row_bytes, dtype_, out.get(),
                                                  ctx.stream()));
  // The next matrix reuses the staging buffer; wait until this one is done.
  SINKSERVE_RETURN_IF_ERROR(ctx.Synchronize());
  DeviceMatrix m{out.get(), w.rows, w.cols};
  bytes_ += bytes;
  buffers_.push_back(std::move(out));
  return m;
}

absl::StatusOr<const float*> DeviceWeights::Vector(const float* host, int64_t n,
                                                   const DeviceContext& ctx) {
  if (host == nullptr) return nullptr;
  DeviceBuffer out;
  SINKSERVE_RETURN_IF_ERROR(out.Reserve(n * sizeof(float)));
  SINKSERVE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out.get(), host, n * sizeof(float),
                                                 cudaMemcpyHostToDevice, ctx.stream()));
  const float* p = out.as<float>();
  bytes_ += n * sizeof(float);
  buffers_.push_back(std::move(out));
  return p;
}

absl::StatusOr<std::unique_ptr<DeviceWeights>> DeviceWeights::Upload(
    const engine::ModelWeights& weights, DType dtype, const DeviceContext& ctx) {
  const engine::ModelConfig& c = weights.config();
  std::unique_ptr<DeviceWeights> d(new DeviceWeights(dtype));
  SINKSERVE_RETURN_IF_ERROR(ctx.Activate());
  SINKSERVE_ASSIGN_OR_RETURN(d->token_embd_, d->Matrix(weights.token_embd(), ctx));
  SINKSERVE_ASSIGN_OR_RETURN(d->output_norm_, d->Vector(weights.output_norm(), c.dim, ctx));
  if (c.tied_output) {
    d->output_ = d->token_embd_;
  } else {
    SINKSERVE_ASSIGN_OR_RETURN(d->output_, d->Matrix(weights.output(), ctx));
  }
  const int64_t q_dim = c.n_heads * c.head_dim;
  const int64_t kv_dim = c.n_kv_heads * c.head_dim;
  for (const engine::LayerWeights& w : weights.layers()) {
    DeviceLayer l;
    SINKSERVE_ASSIGN_OR_RETURN(l.attn_norm, d->Vector(w.attn_norm, c.dim, ctx));
    SINKSERVE_ASSIGN_OR_RETURN(l.wq, d->Matrix(w.wq, ctx));
    SINKSERVE_ASSIGN_OR_RETURN(l.wk, d->Matrix(w.wk, ctx));
    SINKSERVE_ASSIGN_OR_RETURN(l.wv, d->Matrix(w.wv, ctx));
    SINKSERVE_ASSIGN_OR_RETURN(l.wo, d->Matrix(w.wo, ctx));
    SINKSERVE_ASSIGN_OR_RETURN(l.bq, d->Vector(w.bq, q_dim, ctx));
    SINKSERVE_ASSIGN_OR_RETURN(l.bk, d->Vector(w.bk, kv_dim, ctx));
    SINKSERVE_ASSIGN_OR_RETURN(l.bv, d->Vector(w.bv, kv_dim, ctx));
    SINKSERVE_ASSIGN_OR_RETURN(l.ffn_norm, d->Vector(w.ffn_norm, c.dim, ctx));
    SINKSERVE_ASSIGN_OR_RETURN(l.w_gate, d->Matrix(w.w_gate, ctx));
    SINKSERVE_ASSIGN_OR_RETURN(l.w_up, d->Matrix(w.w_up, ctx));
    SINKSERVE_ASSIGN_OR_RETURN(l.w_down, d->Matrix(w.w_down, ctx));
    d->layers_.push_back(l);
  }
  SINKSERVE_RETURN_IF_ERROR(ctx.Synchronize());
  d->staging_ = DeviceBuffer();  // only needed while loading
  return d;
}

}  // namespace sinkserve::kernels
