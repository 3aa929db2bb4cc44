#include "kernels/cuda_backend.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/cpu/attention.h"
#include "kernels/cuda_check.h"
#include "kernels/cuda_kv_storage.h"
#include "kernels/decode_graphs.h"
#include "kernels/device_buffer.h"
#include "kernels/device_context.h"
#include "kernels/device_weights.h"
#include "kernels/ops.h"
#include "kernels/step_plan.h"
#include "memory/status_macros.h"

namespace sinkserve::kernels {
namespace {

using engine::Backend;
using engine::KvDtype;
using engine::KvStorage;
using engine::LogitsMode;
using engine::ModelConfig;
using engine::SequenceStep;
using engine::StepResult;

DType ToDType(KvDtype t) {
  switch (t) {
    case KvDtype::kF32:
      return DType::kF32;
    case KvDtype::kF16:
      return DType::kF16;
    case KvDtype::kBF16:
      return DType::kBF16;
  }
  return DType::kF32;
}

cudaDataType CudaType(DType t) {
  switch (t) {
    case DType::kF32:
      return CUDA_R_32F;
    case DType::kF16:
      return CUDA_R_16F;
    case DType::kBF16:
      return CUDA_R_16BF;
  }
  return CUDA_R_32F;
}

class CudaBackendImpl : public CudaBackend {
 public:
  CudaBackendImpl(std::shared_ptr<DeviceContext> ctx, ModelConfig config,
                  std::unique_ptr<DeviceWeights> weights, KvDtype kv_dtype, bool graphs,
                  bool flash_prefill)
      : use_graphs_(graphs),
        ctx_(std::move(ctx)),
        config_(std::move(config)),
        w_(std::move(weights)),
        kv_dtype_(kv_dtype),
        act_(w_->dtype()),
        q_dim_(config_.n_heads * config_.head_dim),
        kv_dim_(config_.n_kv_heads * config_.head_dim),
        rope_(config_.head_dim, config_.rope_freq_base, config_.rope_scale,
              config_.rope_style),
        plan_(config_, ToDType(kv_dtype), flash_prefill) {
    shape_.n_heads = static_cast<int>(config_.n_heads);
    shape_.n_kv_heads = static_cast<int>(config_.n_kv_heads);
    shape_.head_dim = static_cast<int>(config_.head_dim);
    shape_.n_layers = static_cast<int>(config_.n_layers);
    shape_.rope_neox = config_.rope_style == engine::RopeStyle::kNeox ? 1 : 0;
    shape_.scale = 1.f / std::sqrt(static_cast<float>(config_.head_dim));
  }

  std::string_view name() const override { return "cuda"; }
  const ModelConfig& config() const override { return config_; }

  absl::StatusOr<std::unique_ptr<KvStorage>> NewKvStorage(int capacity) override {
    SINKSERVE_ASSIGN_OR_RETURN(
        std::unique_ptr<CudaKvStorage> kv,
        CudaKvStorage::Create(ctx_, config_.n_layers, kv_dim_, capacity, kv_dtype_));
    return std::unique_ptr<KvStorage>(std::move(kv));
  }

  absl::Status Forward(absl::Span<const SequenceStep> batch, StepResult* result) override {
    return ForwardAndSample(batch, {}, result, nullptr);
  }
  absl::Status ForwardAndSample(absl::Span<const SequenceStep> batch,
                                absl::Span<const std::optional<SampleParams>> picks,
                                StepResult* result, std::vector<SampleResult>* samples) override;
  int64_t graph_replays() const override { return graphs_.replays(); }

 private:
  // y (n, w.rows) f32 = x (n, w.cols) @ W^T + beta * y, f32 accumulation.
  absl::Status Gemm(const DeviceMatrix& w, const void* x, int n, float* y, float beta);
  absl::Status Reserve(int64_t n_rows, int64_t n_out);
  absl::Status UploadRope(int64_t max_position);
  absl::Status Layer(int layer);
  // Embedding, every layer, final norm and output GEMM: the device work of a
  // step after its tables are uploaded. Enqueues only (graph-capturable).
  absl::Status RunModel();
  // What a captured RunModel depends on: shapes and buffer addresses.
  DecodeGraphs::Key GraphKey() const;
  // Copies the logits computed by RunModel to the host, or picks tokens on
  // the device for sequences with a pick.
  absl::Status Logits(absl::Span<const SequenceStep> batch,
                      absl::Span<const std::optional<SampleParams>> picks, StepResult* result,
                      std::vector<SampleResult>* samples);

  const bool use_graphs_;
  DecodeGraphs graphs_;  // declared before ctx_: destroyed after the streams' work
  std::shared_ptr<DeviceContext> ctx_;
  const ModelConfig config_;
  std::unique_ptr<DeviceWeights> w_;
  const KvDtype kv_dtype_;
  const DType act_;  // GEMM input type = weight type
  const int64_t q_dim_;
  const int64_t kv_dim_;
  AttentionShape shape_;

  // cos/sin of every position seen so far: the CPU reference's own table,
  // so rotations are bit-identical; mirrored on the device.
  engine::RopeTable rope_;
  int64_t rope_on_device_ = 0;
  DeviceBuffer rope_cos_;  // (positions, head_dim / 2)
  DeviceBuffer rope_sin_;  // (positions, head_dim / 2)

  StepPlan plan_;  // per-step tables, host and device
  DeviceBuffer x_;        // (n_rows, dim) f32 residual stream
  DeviceBuffer xb_;       // (n_rows, dim) act: normed input
  DeviceBuffer q_;        // (n_rows, q_dim) f32
  DeviceBuffer k_;        // (n_rows, kv_dim) f32, pre-RoPE
  DeviceBuffer v_;        // (n_rows, kv_dim) f32
  DeviceBuffer att_;      // (n_rows, q_dim) act: attention output
  DeviceBuffer gate_;     // (n_rows, ffn_dim) f32
  DeviceBuffer up_;       // (n_rows, ffn_dim) f32
  DeviceBuffer ffn_;      // (n_rows, ffn_dim) act: silu(gate) * up
  DeviceBuffer partial_;  // (decode rows, n_heads, splits, head_dim + 2) f32
  DeviceBuffer out_x_;    // (n_out, dim) act: final-normed rows needing logits
  DeviceBuffer logits_;   // (n_out, vocab) f32
  // Device picks: rows of logits_, their parameters and results, (n_picks).
  std::vector<int32_t> pick_rows_;
  std::vector<SampleParams> pick_params_;
  std::vector<SampleResult> pick_results_;
  DeviceBuffer pick_rows_dev_, pick_params_dev_, pick_results_dev_;
};

absl::Status CudaBackendImpl::Gemm(const DeviceMatrix& w, const void* x, int n, float* y,
                               float beta) {
  const float alpha = 1.f;
  const cudaDataType type = CudaType(act_);
  // Row-major W (rows, cols) is column-major (cols, rows): y^T = W x^T.
  SINKSERVE_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(
      ctx_->cublas(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(w.rows), n,
      static_cast<int>(w.cols), &alpha, w.data, type, static_cast<int>(w.cols), x, type,
      static_cast<int>(w.cols), &beta, y, CUDA_R_32F, static_cast<int>(w.rows),
      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return absl::OkStatus();
}

absl::Status CudaBackendImpl::Reserve(int64_t n_rows, int64_t n_out) {
  const int64_t dim = config_.dim, ffn = config_.ffn_dim;
  const size_t a = DTypeBytes(act_), f = sizeof(float);
  SINKSERVE_RETURN_IF_ERROR(x_.Reserve(n_rows * dim * f));
  SINKSERVE_RETURN_IF_ERROR(xb_.Reserve(n_rows * dim * a));
  SINKSERVE_RETURN_IF_ERROR(q_.Reserve(n_rows * q_dim_ * f));
  SINKSERVE_RETURN_IF_ERROR(k_.Reserve(n_rows * kv_dim_ * f));
  SINKSERVE_RETURN_IF_ERROR(v_.Reserve(n_rows * kv_dim_ * f));
  SINKSERVE_RETURN_IF_ERROR(att_.Reserve(n_rows * q_dim_ * a));
  SINKSERVE_RETURN_IF_ERROR(gate_.Reserve(n_rows * ffn * f));
  SINKSERVE_RETURN_IF_ERROR(up_.Reserve(n_rows * ffn * f));
  SINKSERVE_RETURN_IF_ERROR(ffn_.Reserve(n_rows * ffn * a));
  SINKSERVE_RETURN_IF_ERROR(partial_.Reserve(
      DecodeAttentionScratchFloats(plan_.n_decode(), shape_, plan_.n_splits()) * f));
  SINKSERVE_RETURN_IF_ERROR(out_x_.Reserve(std::max<int64_t>(n_out, 1) * dim * a));
  SINKSERVE_RETURN_IF_ERROR(
      logits_.Reserve(std::max<int64_t>(n_out, 1) * config_.vocab_size * f));
  return absl::OkStatus();
}

absl::Status CudaBackendImpl::UploadRope(int64_t max_position) {
  rope_.Reserve(max_position);
  if (rope_.size() <= rope_on_device_) return absl::OkStatus();
  const size_t bytes = rope_.size() * (config_.head_dim / 2) * sizeof(float);
  // Growing a buffer drops its contents, so the whole table goes up again;
  // the table grows geometrically, so this is rare.
  SINKSERVE_RETURN_IF_ERROR(ctx_->Synchronize());  // no kernel still reads the old one
  SINKSERVE_RETURN_IF_ERROR(rope_cos_.Reserve(bytes));
  SINKSERVE_RETURN_IF_ERROR(rope_sin_.Reserve(bytes));
  SINKSERVE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(rope_cos_.get(), rope_.cos(0), bytes,
                                                 cudaMemcpyHostToDevice, ctx_->stream()));
  SINKSERVE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(rope_sin_.get(), rope_.sin(0), bytes,
                                                 cudaMemcpyHostToDevice, ctx_->stream()));
  rope_on_device_ = rope_.size();
  return absl::OkStatus();
}

absl::Status CudaBackendImpl::Layer(int layer) {
  const DeviceLayer& w = w_->layers()[layer];
  const int n = plan_.n_rows();
  const int dim = static_cast<int>(config_.dim);
  const cudaStream_t stream = ctx_->stream();
  const StepTables& t = plan_.tables();
  const float* cos = rope_cos_.as<float>();
  const float* sin = rope_sin_.as<float>();

  // Attention block.
  SINKSERVE_CUDA_RETURN_IF_ERROR(LaunchRmsNorm(x_.as<float>(), nullptr, w.attn_norm, n, dim,
                                               config_.rms_eps, act_, xb_.get(), stream));
  SINKSERVE_RETURN_IF_ERROR(Gemm(w.wq, xb_.get(), n, q_.as<float>(), 0.f));
  SINKSERVE_RETURN_IF_ERROR(Gemm(w.wk, xb_.get(), n, k_.as<float>(), 0.f));
  SINKSERVE_RETURN_IF_ERROR(Gemm(w.wv, xb_.get(), n, v_.as<float>(), 0.f));
  SINKSERVE_CUDA_RETURN_IF_ERROR(
      LaunchRopeQueries(q_.as<float>(), w.bq, t, shape_, cos, sin, stream));
  SINKSERVE_CUDA_RETURN_IF_ERROR(LaunchKvWrite(k_.as<float>(), v_.as<float>(), w.bk, w.bv, t,
                                               layer, static_cast<int>(kv_dim_),
                                               ToDType(kv_dtype_), stream));
  SINKSERVE_CUDA_RETURN_IF_ERROR(LaunchDecodeAttention(
      q_.as<float>(), t, shape_, layer, ToDType(kv_dtype_), cos, sin, plan_.decode_rows(),
      plan_.n_decode(), plan_.n_splits(), plan_.max_decode_keys(), partial_.as<float>(),
      act_, att_.get(), stream));
  // Prefill chunks: tensor cores for f16 / bf16 KV and the head sizes the
  // flash kernel has, else the CUDA-core kernel; the plan's tiles are sized
  // for the one it chose.
  if (plan_.flash_prefill()) {
    SINKSERVE_CUDA_RETURN_IF_ERROR(LaunchFlashPrefillAttention(
        q_.as<float>(), t, shape_, layer, ToDType(kv_dtype_), cos, sin, plan_.tiles(),
        plan_.n_tiles(), act_, att_.get(), stream));
  } else {
    SINKSERVE_CUDA_RETURN_IF_ERROR(LaunchPrefillAttention(
        q_.as<float>(), t, shape_, layer, ToDType(kv_dtype_), cos, sin, plan_.tiles(),
        plan_.n_tiles(), act_, att_.get(), stream));
  }
  // Residual add folded into the projection: x = att @ Wo^T + x.
  SINKSERVE_RETURN_IF_ERROR(Gemm(w.wo, att_.get(), n, x_.as<float>(), 1.f));

  // Feed-forward block (SwiGLU).
  SINKSERVE_CUDA_RETURN_IF_ERROR(LaunchRmsNorm(x_.as<float>(), nullptr, w.ffn_norm, n, dim,
                                               config_.rms_eps, act_, xb_.get(), stream));
  SINKSERVE_RETURN_IF_ERROR(Gemm(w.w_gate, xb_.get(), n, gate_.as<float>(), 0.f));
  SINKSERVE_RETURN_IF_ERROR(Gemm(w.w_up, xb_.get(), n, up_.as<float>(), 0.f));
  SINKSERVE_CUDA_RETURN_IF_ERROR(LaunchSwiGlu(gate_.as<float>(), up_.as<float>(),
                                              static_cast<int64_t>(n) * config_.ffn_dim, act_,
                                              ffn_.get(), stream));
  SINKSERVE_RETURN_IF_ERROR(Gemm(w.w_down, ffn_.get(), n, x_.as<float>(), 1.f));
  return absl::OkStatus();
}

absl::Status CudaBackendImpl::Logits(absl::Span<const SequenceStep> batch,
                                     absl::Span<const std::optional<SampleParams>> picks,
                                     StepResult* result, std::vector<SampleResult>* samples) {
  const int64_t vocab = config_.vocab_size;
  const cudaStream_t stream = ctx_->stream();
  pick_rows_.clear();
  pick_params_.clear();
  int64_t row = 0;
  for (size_t s = 0; s < batch.size(); ++s) {
    const int64_t rows = plan_.out_rows_of(s);
    std::vector<float>& out = result->logits[s];
    if (!picks.empty() && picks[s].has_value()) {
      out.clear();
      pick_rows_.push_back(static_cast<int32_t>(row + rows - 1));  // the last row
      pick_params_.push_back(*picks[s]);
    } else {
      out.resize(rows * vocab);
      if (!out.empty()) {
        SINKSERVE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out.data(),
                                                       logits_.as<float>() + row * vocab,
                                                       out.size() * sizeof(float),
                                                       cudaMemcpyDeviceToHost, stream));
      }
    }
    row += rows;
  }
  if (!pick_rows_.empty()) {
    const size_t n = pick_rows_.size();
    SINKSERVE_RETURN_IF_ERROR(pick_rows_dev_.Reserve(n * sizeof(int32_t)));
    SINKSERVE_RETURN_IF_ERROR(pick_params_dev_.Reserve(n * sizeof(SampleParams)));
    SINKSERVE_RETURN_IF_ERROR(pick_results_dev_.Reserve(n * sizeof(SampleResult)));
    SINKSERVE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(pick_rows_dev_.get(), pick_rows_.data(),
                                                   n * sizeof(int32_t), cudaMemcpyHostToDevice,
                                                   stream));
    SINKSERVE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(pick_params_dev_.get(), pick_params_.data(),
                                                   n * sizeof(SampleParams),
                                                   cudaMemcpyHostToDevice, stream));
    SINKSERVE_CUDA_RETURN_IF_ERROR(LaunchSample(
        logits_.as<float>(), pick_rows_dev_.as<int32_t>(), static_cast<int>(n),
        static_cast<int>(vocab), pick_params_dev_.as<SampleParams>(),
        pick_results_dev_.as<SampleResult>(), stream));
    pick_results_.resize(n);
    SINKSERVE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(pick_results_.data(),
                                                   pick_results_dev_.get(),
                                                   n * sizeof(SampleResult),
                                                   cudaMemcpyDeviceToHost, stream));
  }
  SINKSERVE_RETURN_IF_ERROR(ctx_->Synchronize());
  if (samples != nullptr) {
    samples->assign(batch.size(), SampleResult{-1, 0.f, 0.f});
    size_t next = 0;
    for (size_t s = 0; s < batch.size(); ++s) {
      if (!picks.empty() && picks[s].has_value()) (*samples)[s] = pick_results_[next++];
    }
  }
  return absl::OkStatus();
}

absl::Status CudaBackendImpl::ForwardAndSample(
    absl::Span<const SequenceStep> batch, absl::Span<const std::optional<SampleParams>> picks,
    StepResult* result, std::vector<SampleResult>* samples) {
  if (result == nullptr) return absl::InvalidArgumentError("null StepResult");
  if (!picks.empty()) {
    if (picks.size() != batch.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat(picks.size(), " picks for a batch of ", batch.size()));
    }
    if (samples == nullptr) return absl::InvalidArgumentError("picks without a samples vector");
    for (size_t s = 0; s < batch.size(); ++s) {
      if (!picks[s].has_value()) continue;
      if (batch[s].tokens.empty() || batch[s].logits == LogitsMode::kNone) {
        return absl::InvalidArgumentError(
            absl::StrCat("sequence ", s, ": a pick needs new tokens and logits"));
      }
      const SampleParams& p = *picks[s];
      if (!(p.uniform >= 0.f && p.uniform < 1.f)) {
        return absl::InvalidArgumentError(
            absl::StrCat("sequence ", s, ": uniform draw ", p.uniform, " outside [0, 1)"));
      }
    }
  }
  SINKSERVE_RETURN_IF_ERROR(plan_.Validate(batch, ctx_.get(), kv_dtype_));
  result->logits.resize(batch.size());
  SINKSERVE_RETURN_IF_ERROR(ctx_->Activate());
  SINKSERVE_RETURN_IF_ERROR(plan_.Build(batch, ctx_->multiprocessors()));
  if (plan_.n_rows() == 0) {
    for (auto& logits : result->logits) logits.clear();
    if (samples != nullptr) samples->assign(batch.size(), SampleResult{-1, 0.f, 0.f});
    return absl::OkStatus();
  }
  SINKSERVE_RETURN_IF_ERROR(UploadRope(plan_.max_position()));
  SINKSERVE_RETURN_IF_ERROR(plan_.Upload(*ctx_));
  SINKSERVE_RETURN_IF_ERROR(Reserve(plan_.n_rows(), plan_.n_out()));
  if (use_graphs_) {
    SINKSERVE_RETURN_IF_ERROR(
        graphs_.Run(GraphKey(), ctx_->stream(), [this] { return RunModel(); }));
  } else {
    SINKSERVE_RETURN_IF_ERROR(RunModel());
  }
  return Logits(batch, picks, result, samples);
}

absl::Status CudaBackendImpl::RunModel() {
  const cudaStream_t stream = ctx_->stream();
  SINKSERVE_CUDA_RETURN_IF_ERROR(LaunchEmbedding(w_->token_embd().data, act_, plan_.tokens(),
                                                 plan_.n_rows(), static_cast<int>(config_.dim),
                                                 x_.as<float>(), stream));
  for (int layer = 0; layer < config_.n_layers; ++layer) {
    SINKSERVE_RETURN_IF_ERROR(Layer(layer));
  }
  const int n_out = plan_.n_out();
  if (n_out == 0) return absl::OkStatus();
  SINKSERVE_CUDA_RETURN_IF_ERROR(LaunchRmsNorm(
      x_.as<float>(), plan_.out_rows(), w_->output_norm(), n_out,
      static_cast<int>(config_.dim), config_.rms_eps, act_, out_x_.get(), stream));
  return Gemm(w_->output(), out_x_.get(), n_out, logits_.as<float>(), 0.f);
}

DecodeGraphs::Key CudaBackendImpl::GraphKey() const {
  auto address = [](const DeviceBuffer& b) { return reinterpret_cast<int64_t>(b.get()); };
  return {plan_.n_rows(),          plan_.n_decode(),       plan_.n_splits(),
          plan_.max_decode_keys(), plan_.n_tiles(),        plan_.n_out(),
          plan_.tables().n_seqs,   plan_.table_ints(),     plan_.ints_address(),
          plan_.ptrs_address(),
          address(rope_cos_),      address(rope_sin_),     address(x_),
          address(xb_),            address(q_),            address(k_),
          address(v_),             address(att_),          address(gate_),
          address(up_),            address(ffn_),          address(partial_),
          address(out_x_),         address(logits_)};
}

}  // namespace

bool CudaAvailable() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

absl::StatusOr<std::unique_ptr<Backend>> NewCudaBackend(
    std::shared_ptr<const engine::ModelWeights> weights, const CudaBackendOptions& options) {
  if (weights == nullptr) return absl::InvalidArgumentError("null model weights");
  const ModelConfig& c = weights->config();
  // The device first: without one the answer is UNAVAILABLE whatever the model.
  SINKSERVE_ASSIGN_OR_RETURN(std::shared_ptr<DeviceContext> ctx,
                             DeviceContext::Create(options.device));
  if (c.head_dim % 2 != 0 || c.head_dim > 256) {
    return absl::UnimplementedError(absl::StrCat(
        "the CUDA backend handles even head sizes up to 256, not ", c.head_dim));
  }
  SINKSERVE_CUDA_RETURN_IF_ERROR(PreparePrefillAttention());
  SINKSERVE_ASSIGN_OR_RETURN(
      std::unique_ptr<DeviceWeights> device_weights,
      DeviceWeights::Upload(*weights, ToDType(options.weight_dtype), *ctx));
  return std::unique_ptr<Backend>(
      new CudaBackendImpl(std::move(ctx), c, std::move(device_weights), options.kv_dtype,
                          options.cuda_graphs, options.flash_prefill));
}

}  // namespace sinkserve::kernels
