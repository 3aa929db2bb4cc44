#include "kernels/step_plan.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/cpu/attention.h"
#include "kernels/cuda_check.h"
#include "memory/status_macros.h"

namespace sinkserve::kernels {
namespace {

using engine::LogitsMode;
using engine::SequenceStep;

// Decode splits: enough blocks to cover the multiprocessors a few times
// over, but no split shorter than this many keys (each split costs a merge).
constexpr int kMinKeysPerSplit = 64;
constexpr int kMaxSplits = 64;

}  // namespace

StepPlan::StepPlan(const engine::ModelConfig& c, DType kv_type, bool allow_flash)
    : n_layers_(c.n_layers),
      kv_dim_(c.n_kv_heads * c.head_dim),
      n_heads_(c.n_heads),
      n_kv_heads_(c.n_kv_heads),
      head_dim_(c.head_dim),
      checker_(c.vocab_size, engine::kMaxRopePosition),
      flash_prefill_(
          allow_flash &&
          FlashPrefillAttentionSupported(
              AttentionShape{static_cast<int>(c.n_heads), static_cast<int>(c.n_kv_heads),
                             static_cast<int>(c.head_dim), static_cast<int>(c.n_layers), 0, 1.f},
              kv_type)) {}

absl::Status StepPlan::Validate(absl::Span<const SequenceStep> batch, const DeviceContext* ctx,
                                engine::KvDtype kv_dtype) {
  kvs_.resize(batch.size());
  for (size_t s = 0; s < batch.size(); ++s) {
    const SequenceStep& step = batch[s];
    auto* kv = dynamic_cast<CudaKvStorage*>(step.kv);
    if (kv == nullptr || kv->context() != ctx) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sequence ", s, ": KV storage missing or not from this CUDA backend"));
    }
    if (kv->n_layers() != n_layers_ || kv->kv_dim() != kv_dim_ || kv->dtype() != kv_dtype) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", s, ": KV storage made for another model or dtype"));
    }
    kvs_[s] = kv;
    SINKSERVE_RETURN_IF_ERROR(checker_.Check(batch, s, kv->capacity()));
  }
  return absl::OkStatus();
}

absl::Status StepPlan::Build(absl::Span<const SequenceStep> batch, int multiprocessors) {
  const size_t n_seqs = batch.size();
  int64_t rows = 0, keys = 0;
  for (const SequenceStep& step : batch) {
    rows += step.tokens.size();
    keys += step.context_slots.size() + step.tokens.size();
  }
  if (rows > (1 << 30) || keys > (1 << 30)) {
    return absl::InvalidArgumentError("step too large for 32-bit tables");
  }
  n_rows_ = static_cast<int>(rows);
  host_.clear();
  host_kv_.assign(n_seqs, nullptr);
  out_rows_of_.assign(n_seqs, 0);
  auto section = [&](size_t* at, size_t size) {
    *at = host_.size();
    host_.resize(host_.size() + size);
  };
  section(&tokens_at_, rows);
  section(&row_seq_at_, rows);
  section(&row_keys_at_, rows);
  section(&row_pos_at_, rows);
  section(&row_slot_at_, rows);
  section(&seq_begin_at_, n_seqs + 1);
  section(&seq_cap_at_, n_seqs);
  section(&key_slot_at_, keys);
  section(&key_pos_at_, keys);

  std::vector<int32_t> decode, tiles, out;
  max_position_ = 0;
  max_decode_keys_ = 0;
  const bool tiled = flash_prefill_ || PrefillAttentionSupported(AttentionShape{
      static_cast<int>(n_heads_), static_cast<int>(n_kv_heads_), static_cast<int>(head_dim_),
      static_cast<int>(n_layers_), 0, 1.f});
  const int tile_rows = this->tile_rows();
  int32_t row = 0, key = 0;
  for (size_t s = 0; s < n_seqs; ++s) {
    const SequenceStep& step = batch[s];
    const int32_t n_ctx = static_cast<int32_t>(step.context_slots.size());
    const int32_t n_tok = static_cast<int32_t>(step.tokens.size());
    host_[seq_begin_at_ + s] = key;
    host_[seq_cap_at_ + s] = kvs_[s]->capacity();
    host_kv_[s] = kvs_[s]->data();
    for (int32_t j = 0; j < n_ctx; ++j, ++key) {
      host_[key_slot_at_ + key] = step.context_slots[j];
      host_[key_pos_at_ + key] = step.context_positions[j];
      max_position_ = std::max<int64_t>(max_position_, step.context_positions[j]);
    }
    const bool prefill = tiled && n_tok >= kPrefillMinTokens;
    for (int32_t i = 0; i < n_tok; ++i, ++key) {
      host_[key_slot_at_ + key] = step.token_slots[i];
      host_[key_pos_at_ + key] = step.token_positions[i];
      max_position_ = std::max<int64_t>(max_position_, step.token_positions[i]);
      const int32_t r = row + i;
      host_[tokens_at_ + r] = step.tokens[i];
      host_[row_seq_at_ + r] = static_cast<int32_t>(s);
      host_[row_keys_at_ + r] = n_ctx + i + 1;  // causal: context and tokens 0..i
      host_[row_pos_at_ + r] = step.token_positions[i];
      host_[row_slot_at_ + r] = step.token_slots[i];
      if (prefill) {
        if (i % tile_rows == 0) tiles.push_back(r);
      } else {
        decode.push_back(r);
        max_decode_keys_ = std::max(max_decode_keys_, n_ctx + i + 1);
      }
    }
    const int32_t n_logits = n_tok == 0                                 ? 0
                             : step.logits == LogitsMode::kAll  ? n_tok
                             : step.logits == LogitsMode::kLast ? 1
                                                                : 0;
    for (int32_t i = n_tok - n_logits; i < n_tok; ++i) out.push_back(row + i);
    out_rows_of_[s] = n_logits;
    row += n_tok;
  }
  host_[seq_begin_at_ + n_seqs] = key;
  n_decode_ = static_cast<int>(decode.size());
  n_tiles_ = static_cast<int>(tiles.size());
  n_out_ = static_cast<int>(out.size());
  section(&decode_at_, decode.size());
  std::copy(decode.begin(), decode.end(), host_.begin() + decode_at_);
  section(&tiles_at_, tiles.size());
  std::copy(tiles.begin(), tiles.end(), host_.begin() + tiles_at_);
  section(&out_at_, out.size());
  std::copy(out.begin(), out.end(), host_.begin() + out_at_);

  // Splits: fill ~4 blocks per multiprocessor, keep splits >= kMinKeysPerSplit.
  const int64_t group = n_heads_ / n_kv_heads_;
  const int64_t blocks = std::max<int64_t>(1, n_decode_ * n_kv_heads_ * ((group + 7) / 8));
  const int64_t want = (4 * static_cast<int64_t>(multiprocessors) + blocks - 1) / blocks;
  const int64_t by_keys = std::max<int64_t>(1, max_decode_keys_ / kMinKeysPerSplit);
  n_splits_ = static_cast<int>(std::clamp<int64_t>(std::min(want, by_keys), 1, kMaxSplits));
  return absl::OkStatus();
}

absl::Status StepPlan::Upload(const DeviceContext& ctx) {
  SINKSERVE_RETURN_IF_ERROR(ints_.Reserve(std::max<size_t>(host_.size(), 1) * sizeof(int32_t)));
  SINKSERVE_RETURN_IF_ERROR(ptrs_.Reserve(std::max<size_t>(host_kv_.size(), 1) * sizeof(void*)));
  // Pageable sources are staged before cudaMemcpyAsync returns, so the host
  // vectors may change at the next Build.
  SINKSERVE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(ints_.get(), host_.data(),
                                                 host_.size() * sizeof(int32_t),
                                                 cudaMemcpyHostToDevice, ctx.stream()));
  SINKSERVE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(ptrs_.get(), host_kv_.data(),
                                                 host_kv_.size() * sizeof(void*),
                                                 cudaMemcpyHostToDevice, ctx.stream()));
  tables_.row_seq = Device(row_seq_at_);
  tables_.row_n_keys = Device(row_keys_at_);
  tables_.row_position = Device(row_pos_at_);
  tables_.row_slot = Device(row_slot_at_);
  tables_.seq_key_begin = Device(seq_begin_at_);
  tables_.seq_capacity = Device(seq_cap_at_);
  tables_.key_slot = Device(key_slot_at_);
  tables_.key_position = Device(key_pos_at_);
  tables_.seq_kv = ptrs_.as<void* const>();
  tables_.n_rows = n_rows_;
  tables_.n_seqs = static_cast<int32_t>(host_kv_.size());
  return absl::OkStatus();
}

}  // namespace sinkserve::kernels
