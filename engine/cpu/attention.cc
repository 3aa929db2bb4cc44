#include "engine/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/gguf/fp16.h"
#include "engine/cpu/vec_ops.h"

namespace sinkserve::engine {
namespace {

// Below this many multiply-adds a pass runs on the calling thread: waking
// the pool costs about as much as this much work.
constexpr int64_t kInlineWork = 1 << 14;

}  // namespace

RopeTable::RopeTable(int64_t head_dim, double freq_base, double linear_scale,
                     RopeStyle style)
    : head_dim_(head_dim),
      freq_base_(freq_base),
      linear_scale_(linear_scale > 0 ? linear_scale : 1.0),
      style_(style) {}

void RopeTable::Reserve(int64_t max_position) {
  if (max_position < size_) return;
  // Grow geometrically so a decode loop reserves O(log n) times, but never
  // past kMaxRopePosition (the table is head_dim * 4 bytes per position).
  const int64_t wanted = max_position + 1;
  const int64_t new_size = std::max(wanted, std::min(2 * size_, kMaxRopePosition));
  const int64_t half = head_dim_ / 2;
  cos_.resize(new_size * half);
  sin_.resize(new_size * half);
  for (int64_t p = size_; p < new_size; ++p) {
    const double scaled = static_cast<double>(p) / linear_scale_;
    for (int64_t i = 0; i < half; ++i) {
      const double inv_freq = std::pow(freq_base_, -2.0 * i / head_dim_);
      const double theta = scaled * inv_freq;
      cos_[p * half + i] = static_cast<float>(std::cos(theta));
      sin_[p * half + i] = static_cast<float>(std::sin(theta));
    }
  }
  size_ = new_size;
}

void RopeTable::Rotate(float* head, int64_t position) const {
  const int64_t half = head_dim_ / 2;
  const float* c = &cos_[position * half];  // (head_dim / 2)
  const float* s = &sin_[position * half];  // (head_dim / 2)
  if (style_ == RopeStyle::kNeox) {
    // Pairs (x[i], x[i + d/2]).
    for (int64_t i = 0; i < half; ++i) {
      const float x0 = head[i];
      const float x1 = head[i + half];
      head[i] = x0 * c[i] - x1 * s[i];
      head[i + half] = x0 * s[i] + x1 * c[i];
    }
  } else {
    // Pairs (x[2i], x[2i + 1]).
    for (int64_t i = 0; i < half; ++i) {
      const float x0 = head[2 * i];
      const float x1 = head[2 * i + 1];
      head[2 * i] = x0 * c[i] - x1 * s[i];
      head[2 * i + 1] = x0 * s[i] + x1 * c[i];
    }
  }
}

Attention::Attention(const ModelConfig& config)
    : n_heads_(config.n_heads),
      n_kv_heads_(config.n_kv_heads),
      head_dim_(config.head_dim),
      scale_(1.f / std::sqrt(static_cast<float>(config.head_dim))),
      rope_(config.head_dim, config.rope_freq_base, config.rope_scale, config.rope_style) {}

void Attention::Prepare(absl::Span<const AttentionSequence> sequences, int64_t n_rows) {
  sequences_ = sequences;
  n_rows_ = n_rows;
  row_sequence_.resize(n_rows);
  key_begin_.resize(sequences.size() + 1);
  int64_t keys = 0;
  int64_t max_position = 0;
  for (size_t s = 0; s < sequences.size(); ++s) {
    const AttentionSequence& seq = sequences[s];
    key_begin_[s] = keys;
    keys += seq.context_slots.size() + seq.token_slots.size();
    for (size_t i = 0; i < seq.token_slots.size(); ++i) {
      row_sequence_[seq.row_begin + i] = static_cast<int32_t>(s);
    }
    for (int32_t p : seq.context_positions) max_position = std::max<int64_t>(max_position, p);
    for (int32_t p : seq.token_positions) max_position = std::max<int64_t>(max_position, p);
  }
  key_begin_[sequences.size()] = keys;
  rope_.Reserve(max_position);

  const int64_t kv_dim = n_kv_heads_ * head_dim_;
  const int64_t half = head_dim_ / 2;
  if (keys_.size() < static_cast<size_t>(keys * kv_dim)) {
    keys_.resize(keys * kv_dim);
    values_.resize(keys * kv_dim);
  }
  if (key_slot_.size() < static_cast<size_t>(keys)) {
    key_slot_.resize(keys);
    key_position_.resize(keys);
  }
  if (key_cos_.size() < static_cast<size_t>(keys * half)) {
    key_cos_.resize(keys * half);
    key_sin_.resize(keys * half);
  }
  for (size_t s = 0; s < sequences.size(); ++s) {
    const AttentionSequence& seq = sequences[s];
    const int64_t n_ctx = seq.context_slots.size();
    const int64_t g = key_begin_[s];
    std::copy(seq.context_slots.begin(), seq.context_slots.end(), &key_slot_[g]);
    std::copy(seq.token_slots.begin(), seq.token_slots.end(), &key_slot_[g + n_ctx]);
    std::copy(seq.context_positions.begin(), seq.context_positions.end(), &key_position_[g]);
    std::copy(seq.token_positions.begin(), seq.token_positions.end(),
              &key_position_[g + n_ctx]);
  }
  first_slot_.resize(sequences.size());
  values_in_place_.resize(sequences.size());
  for (size_t s = 0; s < sequences.size(); ++s) {
    const int32_t* slot = &key_slot_[key_begin_[s]];
    const int64_t n = key_begin_[s + 1] - key_begin_[s];
    bool consecutive = n > 0;
    for (int64_t j = 1; j < n && consecutive; ++j) consecutive = slot[j] == slot[0] + j;
    first_slot_[s] = consecutive ? slot[0] : -1;
    values_in_place_[s] = consecutive && sequences[s].kv->dtype() == KvDtype::kF32;
  }
  // Frequency-major, so the writes are sequential (the table reads stride).
  for (int64_t i = 0; i < half; ++i) {
    float* c = &key_cos_[i * keys];
    float* sn = &key_sin_[i * keys];
    for (int64_t g = 0; g < keys; ++g) {
      c[g] = rope_.cos(key_position_[g])[i];
      sn[g] = rope_.sin(key_position_[g])[i];
    }
  }
}

namespace {

// Widens `n` stored elements to float: F32 copies, F16 / BF16 convert (SIMD).
void WidenRow(KvDtype dtype, const void* src, float* dst, int64_t n) {
  switch (dtype) {
    case KvDtype::kF32:
      std::memcpy(dst, src, n * sizeof(float));
      break;
    case KvDtype::kF16:
      HalfToFloatRow(static_cast<const uint16_t*>(src), dst, n);
      break;
    case KvDtype::kBF16:
      Bf16ToFloatRow(static_cast<const uint16_t*>(src), dst, n);
      break;
  }
}

// Element `i` of a stored row as float.
float WidenOne(KvDtype dtype, const void* row, int64_t i) {
  switch (dtype) {
    case KvDtype::kF32:
      return static_cast<const float*>(row)[i];
    case KvDtype::kF16:
      return HalfToFloat(static_cast<const uint16_t*>(row)[i]);
    case KvDtype::kBF16:
      return Bf16ToFloat(static_cast<const uint16_t*>(row)[i]);
  }
  return 0.f;
}

// Row `r` (capacity) of a layer's keys or values, in the storage dtype.
const void* StoredRow(const CpuKvStorage& kv, int64_t layer, bool keys, int64_t r) {
  const int64_t at = r * kv.capacity();
  if (kv.dtype() == KvDtype::kF32) {
    return (keys ? kv.keys(layer) : kv.values(layer)) + at;
  }
  return (keys ? kv.keys16(layer) : kv.values16(layer)) + at;
}

// Converted keys per pass: a chunk of both rows of a RoPE pair stays in L1.
constexpr int64_t kWidenChunk = 512;

}  // namespace

void Attention::GatherRange(int64_t layer, int64_t begin, int64_t end) {
  // Per-thread rows of widened half-precision keys, reused across steps.
  thread_local std::vector<float> wide_a, wide_b;  // (kWidenChunk) each
  const int64_t kv_dim = n_kv_heads_ * head_dim_;
  const int64_t half = head_dim_ / 2;
  const int64_t total = key_begin_.back();
  const bool neox = rope_.style() == RopeStyle::kNeox;
  size_t s = std::upper_bound(key_begin_.begin(), key_begin_.end(), begin) -
             key_begin_.begin() - 1;
  for (; begin < end; ++s) {
    const int64_t kb = key_begin_[s];
    const int64_t n_keys = key_begin_[s + 1] - kb;
    const int64_t j0 = begin - kb;
    const int64_t j1 = std::min(end, kb + n_keys) - kb;
    begin = kb + j1;
    const CpuKvStorage& kv = *sequences_[s].kv;
    const KvDtype dtype = kv.dtype();
    const size_t elem = KvDtypeBytes(dtype);
    const int32_t* slot = &key_slot_[kb];  // (n_keys)
    const int32_t first = first_slot_[s];  // >= 0: slots first, first + 1, ...
    float* kt = &keys_[kb * kv_dim];       // (n_kv_heads, head_dim, n_keys)

    // Rotate keys [j0, j1) pair by pair into kt, reading the storage rows in
    // place (consecutive F32 slots), widened a chunk at a time (consecutive
    // F16 / BF16 slots) or through the slot list.
    for (int64_t h = 0; h < n_kv_heads_; ++h) {
      for (int64_t i = 0; i < half; ++i) {
        const int64_t r0 = h * head_dim_ + (neox ? i : 2 * i);
        const int64_t r1 = h * head_dim_ + (neox ? i + half : 2 * i + 1);
        const float* c = &key_cos_[i * total + kb];   // (n_keys)
        const float* sn = &key_sin_[i * total + kb];  // (n_keys)
        float* x0 = kt + r0 * n_keys;
        float* x1 = kt + r1 * n_keys;
        const void* row0 = StoredRow(kv, layer, true, r0);  // (capacity)
        const void* row1 = StoredRow(kv, layer, true, r1);  // (capacity)
        if (first >= 0) {
          for (int64_t c0 = j0; c0 < j1; c0 += kWidenChunk) {
            const int64_t c1 = std::min(j1, c0 + kWidenChunk);
            const float* a;  // (c1 - c0) first components of the pairs
            const float* b;  // (c1 - c0) second components
            if (dtype == KvDtype::kF32) {
              a = static_cast<const float*>(row0) + first + c0;
              b = static_cast<const float*>(row1) + first + c0;
            } else {
              if (wide_a.size() < static_cast<size_t>(kWidenChunk)) {
                wide_a.resize(kWidenChunk);
                wide_b.resize(kWidenChunk);
              }
              WidenRow(dtype, static_cast<const char*>(row0) + (first + c0) * elem,
                       wide_a.data(), c1 - c0);
              WidenRow(dtype, static_cast<const char*>(row1) + (first + c0) * elem,
                       wide_b.data(), c1 - c0);
              a = wide_a.data();
              b = wide_b.data();
            }
            for (int64_t j = c0; j < c1; ++j) {
              const float x = a[j - c0], y = b[j - c0];
              x0[j] = x * c[j] - y * sn[j];
              x1[j] = x * sn[j] + y * c[j];
            }
          }
        } else {
          for (int64_t j = j0; j < j1; ++j) {
            const float x = WidenOne(dtype, row0, slot[j]);
            const float y = WidenOne(dtype, row1, slot[j]);
            x0[j] = x * c[j] - y * sn[j];
            x1[j] = x * sn[j] + y * c[j];
          }
        }
      }
    }
    // Values are read in place when the slots are consecutive and F32.
    if (!values_in_place_[s]) {
      float* vt = &values_[kb * kv_dim];  // (kv_dim, n_keys)
      for (int64_t r = 0; r < kv_dim; ++r) {
        const void* src = StoredRow(kv, layer, false, r);  // (capacity)
        float* dst = vt + r * n_keys;
        if (first >= 0) {
          WidenRow(dtype, static_cast<const char*>(src) + (first + j0) * elem, dst + j0,
                   j1 - j0);
        } else {
          for (int64_t j = j0; j < j1; ++j) dst[j] = WidenOne(dtype, src, slot[j]);
        }
      }
    }
  }
}

void Attention::GatherKeysValues(int64_t layer, ThreadPool* pool) {
  const int64_t total = key_begin_.back();
  auto gather = [this, layer](int64_t begin, int64_t end) { GatherRange(layer, begin, end); };
  if (total * n_kv_heads_ * head_dim_ < kInlineWork) {
    gather(0, total);
  } else {
    pool->ParallelFor(total, 64, gather);
  }
}

void Attention::AttendRow(int64_t row, int64_t head, float* q, float* out) const {
  // Per-thread scores buffer, grown once and reused by every later step.
  thread_local std::vector<float> scores;
  const int64_t q_dim = n_heads_ * head_dim_;
  const int64_t kv_dim = n_kv_heads_ * head_dim_;
  const int64_t kv_head = head / (n_heads_ / n_kv_heads_);
  const int32_t s = row_sequence_[row];
  const AttentionSequence& seq = sequences_[s];
  const int64_t i = row - seq.row_begin;  // index among the new tokens
  const int64_t n_all = key_begin_[s + 1] - key_begin_[s];
  // Causal: the context and new tokens 0..i, a prefix of the sequence's keys.
  const int64_t n_keys = static_cast<int64_t>(seq.context_slots.size()) + i + 1;
  // Rows of this KV head: (head_dim, n_all) rotated keys, and values as
  // (head_dim, v_stride) with key j at column j.
  const float* kt = &keys_[key_begin_[s] * kv_dim + kv_head * head_dim_ * n_all];
  const float* vt;
  int64_t v_stride;
  if (values_in_place_[s]) {
    v_stride = seq.kv->capacity();
    vt = seq.kv->values(layer_) + kv_head * head_dim_ * v_stride + first_slot_[s];
  } else {
    v_stride = n_all;
    vt = &values_[key_begin_[s] * kv_dim + kv_head * head_dim_ * n_all];
  }

  float* qh = q + row * q_dim + head * head_dim_;  // (head_dim)
  rope_.Rotate(qh, seq.token_positions[i]);
  if (static_cast<int64_t>(scores.size()) < n_keys) scores.resize(n_keys);
  // scores (n_keys) = K q, as head_dim passes over contiguous key rows
  // (vectorises over keys whatever the head size).
  std::fill(scores.begin(), scores.begin() + n_keys, 0.f);
  for (int64_t d = 0; d < head_dim_; ++d) {
    Axpy(qh[d] * scale_, kt + d * n_all, scores.data(), n_keys);
  }
  Softmax(scores.data(), n_keys);
  float* oh = out + row * q_dim + head * head_dim_;  // (head_dim)
  for (int64_t d = 0; d < head_dim_; ++d) {
    oh[d] = Dot(scores.data(), vt + d * v_stride, n_keys);
  }
}

void Attention::Forward(int64_t layer, float* q, float* out, ThreadPool* pool) {
  layer_ = layer;
  GatherKeysValues(layer, pool);
  // Work items are (row, head). Rows are visited in zigzag order (0, n-1, 1,
  // n-2, ...) because causal rows cost more the later they come, and the pool
  // hands each thread one contiguous range: zigzag evens the ranges out.
  // One pointer captured, so that std::function needs no allocation.
  const struct Job {
    Attention* self;
    float* q;
    float* out;
    void Run(int64_t begin, int64_t end) const {
      const int64_t n_rows = self->n_rows_, n_heads = self->n_heads_;
      for (int64_t item = begin; item < end; ++item) {
        const int64_t z = item / n_heads;
        const int64_t row = (z % 2 == 0) ? z / 2 : n_rows - 1 - z / 2;
        self->AttendRow(row, item % n_heads, q, out);
      }
    }
  } job{this, q, out};
  // Work: every row scores and sums (its keys x head_dim) per head; bounded
  // above by all keys for every row.
  if (n_rows_ * key_begin_.back() * n_heads_ * head_dim_ < kInlineWork) {
    job.Run(0, n_rows_ * n_heads_);
  } else {
    pool->ParallelFor(n_rows_ * n_heads_, 1,
                      [&job](int64_t begin, int64_t end) { job.Run(begin, end); });
  }
}

}  // namespace sinkserve::engine
