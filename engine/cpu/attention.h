// Causal multi-head (grouped-query) attention over a KV storage whose keys
// are stored before RoPE.
//
// The storage may hold F32, F16 or BF16 rows; keys are widened to float as they
// are rotated, values as they are gathered, so the math is float throughout.
//
// Positions come with every call, never from the slots: each key is rotated
// by the position its cell has *now*, so a cache that evicts cells and
// renumbers the survivors (StreamingLLM) needs no re-rotation of stored keys.
#ifndef SINKSERVE_ENGINE_CPU_ATTENTION_H_
#define SINKSERVE_ENGINE_CPU_ATTENTION_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "engine/cpu/cpu_kv_storage.h"
#include "engine/gguf/model_config.h"
#include "engine/cpu/thread_pool.h"

namespace sinkserve::engine {

// Positions attention accepts are [0, kMaxRopePosition); callers validate.
inline constexpr int64_t kMaxRopePosition = 1 << 18;

// cos/sin of the RoPE angles of every position seen so far, computed in
// double once and kept: positions are bounded by cache capacities, and a
// table lookup is far cheaper than sin/cos per element per step.
class RopeTable {
 public:
  RopeTable(int64_t head_dim, double freq_base, double linear_scale, RopeStyle style);

  // Makes positions [0, max_position] available. Not thread-safe: call it
  // before any parallel Rotate.
  void Reserve(int64_t max_position);
  int64_t size() const { return size_; }
  RopeStyle style() const { return style_; }

  // Rotates one head (head_dim) in place by the angles of `position`, which
  // must be < size().
  void Rotate(float* head, int64_t position) const;

  // cos / sin of the angles of `position`: (head_dim / 2) each.
  const float* cos(int64_t position) const { return &cos_[position * (head_dim_ / 2)]; }
  const float* sin(int64_t position) const { return &sin_[position * (head_dim_ / 2)]; }

 private:
  int64_t head_dim_;
  double freq_base_;
  double linear_scale_;
  RopeStyle style_;
  int64_t size_ = 0;
  std::vector<float> cos_;  // (position, head_dim / 2)
  std::vector<float> sin_;  // (position, head_dim / 2)
};

// One sequence's share of an attention call. Its new tokens are rows
// [row_begin, row_begin + token_slots.size()) of the query/output matrices,
// and their K/V rows are already written to `kv` at token_slots.
struct AttentionSequence {
  const CpuKvStorage* kv = nullptr;
  absl::Span<const int32_t> context_slots;
  absl::Span<const int32_t> context_positions;
  absl::Span<const int32_t> token_slots;
  absl::Span<const int32_t> token_positions;
  int64_t row_begin = 0;
};

class Attention {
 public:
  explicit Attention(const ModelConfig& config);

  // Sets the sequences of the coming Forward calls (one per layer). Grows
  // the RoPE table to the largest position given. Spans must outlive them.
  void Prepare(absl::Span<const AttentionSequence> sequences, int64_t n_rows);

  // q: (n_rows, n_heads * head_dim), rotated in place.
  // out: (n_rows, n_heads * head_dim).
  void Forward(int64_t layer, float* q, float* out, ThreadPool* pool);

 private:
  // Rotates every sequence's keys of `layer` to their positions into keys_,
  // and gathers values into values_ for sequences whose slots are not
  // consecutive (the others are read in place).
  void GatherKeysValues(int64_t layer, ThreadPool* pool);
  // Does that for keys [begin, end) (global key indices).
  void GatherRange(int64_t layer, int64_t begin, int64_t end);
  void AttendRow(int64_t row, int64_t head, float* q, float* out) const;

  int64_t n_heads_;
  int64_t n_kv_heads_;
  int64_t head_dim_;
  float scale_;  // 1 / sqrt(head_dim)
  RopeTable rope_;

  absl::Span<const AttentionSequence> sequences_;
  int64_t n_rows_ = 0;
  std::vector<int32_t> row_sequence_;  // (n_rows): which sequence owns a row
  std::vector<int64_t> key_begin_;     // (n_sequences + 1): keys before each sequence
  std::vector<int32_t> key_slot_;      // (total keys): slot of each key
  std::vector<int32_t> key_position_;  // (total keys): RoPE position of each key
  // (n_sequences): the first slot when a sequence's keys (context, then new
  // tokens) occupy consecutive slots, else -1.
  std::vector<int32_t> first_slot_;
  // (n_sequences): values read straight from the storage (consecutive slots,
  // F32); the others are widened / gathered into values_.
  std::vector<char> values_in_place_;
  int64_t layer_ = 0;  // layer of the running Forward
  // (head_dim / 2, total keys): RoPE cos / sin of each key's position, the
  // same for every layer, so gathered once per step.
  std::vector<float> key_cos_;
  std::vector<float> key_sin_;
  // Per sequence s, at key_begin_[s] * kv_dim: (n_kv_heads, head_dim, n_keys)
  // with n_keys = context + new tokens of s.
  std::vector<float> keys_;    // rotated by RoPE
  std::vector<float> values_;  // only for sequences without values_in_place_
};

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_CPU_ATTENTION_H_
