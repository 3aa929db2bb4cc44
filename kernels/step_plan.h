// One Forward step of the CUDA backend laid out for the kernels: the batch is
// validated like the CPU backend does it, then flattened into int tables
// (rows, keys, attention work lists) that go to the device in one copy.
#ifndef SINKSERVE_KERNELS_STEP_PLAN_H_
#define SINKSERVE_KERNELS_STEP_PLAN_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "engine/backend.h"
#include "engine/gguf/model_config.h"
#include "engine/step_checker.h"
#include "kernels/cuda_kv_storage.h"
#include "kernels/device_buffer.h"
#include "kernels/device_context.h"
#include "kernels/ops.h"

namespace sinkserve::kernels {

// Sequences with at least this many new tokens take a tiled prefill
// attention kernel; fewer, the split-K decode kernel.
inline constexpr int kPrefillMinTokens = 4;

class StepPlan {
 public:
  // `kv_type` picks the prefill kernel, and with it the tile size: tensor-core
  // tiles (kFlashTileRows) where `allow_flash` and
  // FlashPrefillAttentionSupported, else the CUDA-core kernel's
  // (kPrefillTileRows).
  StepPlan(const engine::ModelConfig& config, DType kv_type, bool allow_flash);

  // INVALID_ARGUMENT / OUT_OF_RANGE for what the CPU backend rejects, and
  // for storages from another device or of another dtype than `kv_dtype`.
  absl::Status Validate(absl::Span<const engine::SequenceStep> batch, const DeviceContext* ctx,
                        engine::KvDtype kv_dtype);
  // Fills the host tables of a validated batch; `multiprocessors` sizes the
  // decode split count.
  absl::Status Build(absl::Span<const engine::SequenceStep> batch, int multiprocessors);
  // Copies the tables to the device; tables() then points there.
  absl::Status Upload(const DeviceContext& ctx);

  int n_rows() const { return n_rows_; }
  int n_out() const { return n_out_; }
  int64_t out_rows_of(size_t seq) const { return out_rows_of_[seq]; }
  int64_t max_position() const { return max_position_; }
  int n_decode() const { return n_decode_; }
  int n_splits() const { return n_splits_; }
  int max_decode_keys() const { return max_decode_keys_; }
  int n_tiles() const { return n_tiles_; }
  // True: tiles() holds kFlashTileRows-row tiles for
  // LaunchFlashPrefillAttention; false: kPrefillTileRows-row tiles for
  // LaunchPrefillAttention. Fixed for the plan's lifetime.
  bool flash_prefill() const { return flash_prefill_; }
  int tile_rows() const { return flash_prefill_ ? kFlashTileRows : kPrefillTileRows; }

  // Size and device address of the uploaded tables: with the counts above
  // they fix every pointer in tables() (for graph keys).
  int64_t table_ints() const { return static_cast<int64_t>(host_.size()); }
  int64_t ints_address() const { return reinterpret_cast<int64_t>(ints_.get()); }
  int64_t ptrs_address() const { return reinterpret_cast<int64_t>(ptrs_.get()); }

  // Device pointers, valid after Upload.
  const StepTables& tables() const { return tables_; }
  const int32_t* tokens() const { return Device(tokens_at_); }
  // Null when every row is a decode row.
  const int32_t* decode_rows() const {
    return n_decode_ == n_rows_ ? nullptr : Device(decode_at_);
  }
  const int32_t* tiles() const { return Device(tiles_at_); }
  const int32_t* out_rows() const { return Device(out_at_); }

 private:
  const int32_t* Device(size_t offset) const { return ints_.as<int32_t>() + offset; }

  int64_t n_layers_, kv_dim_, n_heads_, n_kv_heads_, head_dim_;
  engine::StepChecker checker_;
  bool flash_prefill_;  // the tensor-core prefill kernel handles this model and KV type
  std::vector<CudaKvStorage*> kvs_;  // (n_seqs)

  int n_rows_ = 0, n_out_ = 0, n_decode_ = 0, n_splits_ = 1, max_decode_keys_ = 0;
  int n_tiles_ = 0;
  int64_t max_position_ = 0;
  std::vector<int64_t> out_rows_of_;  // (n_seqs) logits rows per sequence
  // Host tables, concatenated: tokens, row_seq, row_n_keys, row_position,
  // row_slot, seq_key_begin, seq_capacity, key_slot, key_position,
  // decode rows, tile first rows, out rows.
  std::vector<int32_t> host_;
  std::vector<void*> host_kv_;        // (n_seqs) storage base pointers
  size_t tokens_at_ = 0, row_seq_at_ = 0, row_keys_at_ = 0, row_pos_at_ = 0, row_slot_at_ = 0,
         seq_begin_at_ = 0, seq_cap_at_ = 0, key_slot_at_ = 0, key_pos_at_ = 0,
         decode_at_ = 0, tiles_at_ = 0, out_at_ = 0;
  DeviceBuffer ints_;  // host_ on the device
  DeviceBuffer ptrs_;  // host_kv_ on the device
  StepTables tables_{};
};

}  // namespace sinkserve::kernels

#endif  // SINKSERVE_KERNELS_STEP_PLAN_H_
