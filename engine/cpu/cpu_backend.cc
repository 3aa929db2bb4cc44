#include "engine/cpu/cpu_backend.h"

#include <cmath>
#include <cstring>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/cpu/attention.h"
#include "engine/cpu/cpu_kv_storage.h"
#include "engine/cpu/matmul.h"
#include "engine/cpu/thread_pool.h"
#include "engine/cpu/vec_ops.h"
#include "engine/step_checker.h"
#include "memory/status_macros.h"

namespace sinkserve::engine {
namespace {

// Below this many elements an elementwise pass runs on the calling thread:
// waking the pool would cost more than the work.
constexpr int64_t kParallelElements = 1 << 15;

// out (n, dim) = x (n, dim) / rms(x) * w (dim). out may alias x.
void RmsNormRows(const float* x, const float* w, int64_t n, int64_t dim, float eps,
                 float* out, ThreadPool* pool) {
  // One pointer captured, so that std::function needs no allocation.
  const struct Job {
    const float* x;
    const float* w;
    int64_t dim;
    float eps;
    float* out;
    void Run(int64_t begin, int64_t end) const {
      for (int64_t r = begin; r < end; ++r) RmsNorm(x + r * dim, w, dim, eps, out + r * dim);
    }
  } job{x, w, dim, eps, out};
  if (n * dim < kParallelElements) {
    job.Run(0, n);
  } else {
    pool->ParallelFor(n, 1, [&job](int64_t begin, int64_t end) { job.Run(begin, end); });
  }
}

// x (count) += y (count).
void AddRows(float* x, const float* y, int64_t count) { Add(x, y, x, count); }

// gate (count) = silu(gate) * up.
void SwiGlu(float* gate, const float* up, int64_t count, ThreadPool* pool) {
  auto range = [=](int64_t begin, int64_t end) {
    SiluMul(gate + begin, up + begin, end - begin);
  };
  if (count < kParallelElements) {
    range(0, count);
  } else {
    pool->ParallelFor(count, 4096, range);
  }
}

// x (n, width) += bias (width) on every row.
void AddBias(float* x, const float* bias, int64_t n, int64_t width) {
  if (bias == nullptr) return;
  for (int64_t r = 0; r < n; ++r) AddRows(x + r * width, bias, width);
}

// Grows `v` to at least `n` elements; never shrinks, so steady-state steps
// allocate nothing.
void Reserve(std::vector<float>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(n);
}

class CpuBackend : public Backend {
 public:
  CpuBackend(std::shared_ptr<const ModelWeights> weights, int threads, KvDtype kv_dtype)
      : weights_(std::move(weights)),
        kv_dtype_(kv_dtype),
        config_(weights_->config()),
        q_dim_(config_.n_heads * config_.head_dim),
        kv_dim_(config_.n_kv_heads * config_.head_dim),
        pool_(threads),
        attention_(config_),
        checker_(config_.vocab_size, kMaxRopePosition) {}

  std::string_view name() const override { return "cpu"; }
  const ModelConfig& config() const override { return config_; }

  absl::StatusOr<std::unique_ptr<KvStorage>> NewKvStorage(int capacity) override {
    SINKSERVE_ASSIGN_OR_RETURN(std::unique_ptr<CpuKvStorage> kv,
                               CpuKvStorage::Create(config_.n_layers, kv_dim_, capacity, kv_dtype_));
    return std::unique_ptr<KvStorage>(std::move(kv));
  }

  absl::Status Forward(absl::Span<const SequenceStep> batch, StepResult* result) override;

 private:
  absl::Status Validate(absl::Span<const SequenceStep> batch);
  void Layer(int64_t layer, int64_t n_rows);
  void Logits(absl::Span<const SequenceStep> batch, StepResult* result);

  std::shared_ptr<const ModelWeights> weights_;
  const KvDtype kv_dtype_;
  const ModelConfig& config_;
  const int64_t q_dim_;
  const int64_t kv_dim_;
  ThreadPool pool_;
  Attention attention_;
  StepChecker checker_;

  // Per-step state, reused across steps.
  std::vector<CpuKvStorage*> kvs_;               // (n_sequences)
  std::vector<AttentionSequence> sequences_;     // (n_sequences)
  std::vector<float> x_;       // (n_rows, dim) residual stream
  std::vector<float> xb_;      // (n_rows, dim) normed input / block output
  std::vector<float> q_;       // (n_rows, q_dim)
  std::vector<float> k_;       // (n_rows, kv_dim) pre-RoPE
  std::vector<float> v_;       // (n_rows, kv_dim)
  std::vector<float> att_;     // (n_rows, q_dim) attention output
  std::vector<float> gate_;    // (n_rows, ffn_dim)
  std::vector<float> up_;      // (n_rows, ffn_dim)
  std::vector<float> out_x_;   // (n_out, dim) final-normed rows that need logits
  std::vector<float> logits_;  // (n_out, vocab)
};

absl::Status CpuBackend::Validate(absl::Span<const SequenceStep> batch) {
  kvs_.resize(batch.size());
  for (size_t s = 0; s < batch.size(); ++s) {
    const SequenceStep& step = batch[s];
    auto* kv = dynamic_cast<CpuKvStorage*>(step.kv);
    if (kv == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", s, ": KV storage missing or not from the CPU backend"));
    }
    if (kv->n_layers() != config_.n_layers || kv->kv_dim() != kv_dim_) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", s, ": KV storage made for another model"));
    }
    kvs_[s] = kv;
    SINKSERVE_RETURN_IF_ERROR(checker_.Check(batch, s, kv->capacity()));
  }
  return absl::OkStatus();
}

void CpuBackend::Layer(int64_t layer, int64_t n_rows) {
  const LayerWeights& w = weights_->layers()[layer];
  const int64_t dim = config_.dim;
  const int64_t ffn = config_.ffn_dim;
  ThreadPool* pool = &pool_;

  // Attention block.
  RmsNormRows(x_.data(), w.attn_norm, n_rows, dim, config_.rms_eps, xb_.data(), pool);
  // q (n_rows, q_dim), k and v (n_rows, kv_dim): one pass over xb.
  const MatMulOutput qkv[] = {{&w.wq, q_.data()}, {&w.wk, k_.data()}, {&w.wv, v_.data()}};
  MatMulFused(qkv, xb_.data(), n_rows, pool);
  AddBias(q_.data(), w.bq, n_rows, q_dim_);
  AddBias(k_.data(), w.bk, n_rows, kv_dim_);
  AddBias(v_.data(), w.bv, n_rows, kv_dim_);
  // Store K (before RoPE) and V of every new token in its slot.
  for (size_t s = 0; s < sequences_.size(); ++s) {
    const AttentionSequence& seq = sequences_[s];
    for (size_t i = 0; i < seq.token_slots.size(); ++i) {
      const int64_t row = seq.row_begin + i;
      kvs_[s]->Write(layer, seq.token_slots[i], &k_[row * kv_dim_], &v_[row * kv_dim_]);
    }
  }
  attention_.Forward(layer, q_.data(), att_.data(), pool);  // (n_rows, q_dim)
  MatMul(w.wo, att_.data(), n_rows, xb_.data(), pool);       // (n_rows, dim)
  AddRows(x_.data(), xb_.data(), n_rows * dim);

  // Feed-forward block (SwiGLU).
  RmsNormRows(x_.data(), w.ffn_norm, n_rows, dim, config_.rms_eps, xb_.data(), pool);
  // gate and up (n_rows, ffn): one pass over xb.
  const MatMulOutput gate_up[] = {{&w.w_gate, gate_.data()}, {&w.w_up, up_.data()}};
  MatMulFused(gate_up, xb_.data(), n_rows, pool);
  SwiGlu(gate_.data(), up_.data(), n_rows * ffn, pool);
  MatMul(w.w_down, gate_.data(), n_rows, xb_.data(), pool);  // (n_rows, dim)
  AddRows(x_.data(), xb_.data(), n_rows * dim);
}

void CpuBackend::Logits(absl::Span<const SequenceStep> batch, StepResult* result) {
  const int64_t dim = config_.dim;
  const int64_t vocab = config_.vocab_size;
  // Gather the rows whose logits were asked for, so the output matmul (the
  // biggest one for small models) runs on those rows only.
  int64_t n_out = 0;
  for (size_t s = 0; s < batch.size(); ++s) {
    const int64_t n = batch[s].tokens.size();
    const int64_t rows = n == 0                                  ? 0
                         : batch[s].logits == LogitsMode::kAll  ? n
                         : batch[s].logits == LogitsMode::kLast ? 1
                                                                : 0;
    const int64_t first = sequences_[s].row_begin + n - rows;
    Reserve(out_x_, (n_out + rows) * dim);
    std::memcpy(&out_x_[n_out * dim], &x_[first * dim], rows * dim * sizeof(float));
    result->logits[s].resize(rows * vocab);
    n_out += rows;
  }
  if (n_out == 0) return;
  RmsNormRows(out_x_.data(), weights_->output_norm(), n_out, dim, config_.rms_eps,
              out_x_.data(), &pool_);
  Reserve(logits_, n_out * vocab);
  MatMul(weights_->output(), out_x_.data(), n_out, logits_.data(), &pool_);
  int64_t row = 0;
  for (size_t s = 0; s < batch.size(); ++s) {
    std::vector<float>& out = result->logits[s];
    std::memcpy(out.data(), &logits_[row * vocab], out.size() * sizeof(float));
    row += out.size() / vocab;
  }
}

absl::Status CpuBackend::Forward(absl::Span<const SequenceStep> batch, StepResult* result) {
  if (result == nullptr) return absl::InvalidArgumentError("null StepResult");
  SINKSERVE_RETURN_IF_ERROR(Validate(batch));
  result->logits.resize(batch.size());

  int64_t n_rows = 0;
  sequences_.resize(batch.size());
  for (size_t s = 0; s < batch.size(); ++s) {
    const SequenceStep& step = batch[s];
    sequences_[s] = AttentionSequence{kvs_[s],          step.context_slots,
                                      step.context_positions, step.token_slots,
                                      step.token_positions,   n_rows};
    n_rows += step.tokens.size();
  }
  if (n_rows == 0) {
    for (auto& logits : result->logits) logits.clear();
    return absl::OkStatus();
  }

  const int64_t dim = config_.dim;
  Reserve(x_, n_rows * dim);
  Reserve(xb_, n_rows * dim);
  Reserve(q_, n_rows * q_dim_);
  Reserve(k_, n_rows * kv_dim_);
  Reserve(v_, n_rows * kv_dim_);
  Reserve(att_, n_rows * q_dim_);
  Reserve(gate_, n_rows * config_.ffn_dim);
  Reserve(up_, n_rows * config_.ffn_dim);

  int64_t row = 0;
  for (const SequenceStep& step : batch) {
    for (int32_t id : step.tokens) {
      DequantizeRow(weights_->token_embd(), id, &x_[row * dim]);  // (dim)
      ++row;
    }
  }
  attention_.Prepare(sequences_, n_rows);
  for (int64_t layer = 0; layer < config_.n_layers; ++layer) Layer(layer, n_rows);
  Logits(batch, result);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> NewCpuBackend(
    std::shared_ptr<const ModelWeights> weights, const CpuBackendOptions& options) {
  if (weights == nullptr) return absl::InvalidArgumentError("null model weights");
  if (options.threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat("threads = ", options.threads));
  }
  if (KvDtypeBytes(options.kv_dtype) == 0) {
    return absl::InvalidArgumentError("unknown KV dtype");
  }
  const int threads = options.threads > 0 ? options.threads : ThreadPool::DefaultThreads();
  return std::unique_ptr<Backend>(
      new CpuBackend(std::move(weights), threads, options.kv_dtype));
}

}  // namespace sinkserve::engine
