#include "engine/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/vec_ops.h"

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
  for (size_t s = 0; s < sequences.size(); ++s) {
    const int32_t* slot = &key_slot_[key_begin_[s]];
    const int64_t n = key_begin_[s + 1] - key_begin_[s];
    bool consecutive = n > 0;
    for (int64_t j = 1; j < n && consecutive; ++j) consecutive = slot[j] == slot[0] + j;
    first_slot_[s] = consecutive ? slot[0] : -1;
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

void Attention::GatherRange(int64_t layer, int64_t begin, int64_t end) {
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
    const int64_t cap = kv.capacity();
    const float* k = kv.keys(layer);    // (kv_dim, capacity)
    const int32_t* slot = &key_slot_[kb];  // (n_keys)
    const int32_t first = first_slot_[s];  // >= 0: slots first, first + 1, ...
    float* kt = &keys_[kb * kv_dim];       // (n_kv_heads, head_dim, n_keys)

    // Rotate keys [j0, j1) pair by pair into kt, reading the storage rows in
    // place (consecutive slots) or through the slot list.
    for (int64_t h = 0; h < n_kv_heads_; ++h) {
      for (int64_t i = 0; i < half; ++i) {
        const int64_t r0 = h * head_dim_ + (neox ? i : 2 * i);
        const int64_t r1 = h * head_dim_ + (neox ? i + half : 2 * i + 1);
        const float* c = &key_cos_[i * total + kb];   // (n_keys)
        const float* sn = &key_sin_[i * total + kb];  // (n_keys)
        float* x0 = kt + r0 * n_keys;
        float* x1 = kt + r1 * n_keys;
        if (first >= 0) {
          const float* a = k + r0 * cap + first;  // (n_keys)
          const float* b = k + r1 * cap + first;  // (n_keys)
          for (int64_t j = j0; j < j1; ++j) {
            x0[j] = a[j] * c[j] - b[j] * sn[j];
            x1[j] = a[j] * sn[j] + b[j] * c[j];
          }
        } else {
          const float* a = k + r0 * cap;  // (capacity)
          const float* b = k + r1 * cap;  // (capacity)
          for (int64_t j = j0; j < j1; ++j) {
            const float x = a[slot[j]], y = b[slot[j]];
            x0[j] = x * c[j] - y * sn[j];
            x1[j] = x * sn[j] + y * c[j];
          }
        }
      }
    }
    // Values are read in place when the slots are consecutive.
    if (first < 0) {
      const float* v = kv.values(layer);    // (kv_dim, capacity)
      float* vt = &values_[kb * kv_dim];    // (kv_dim, n_keys)
      for (int64_t r = 0; r < kv_dim; ++r) {
        const float* src = v + r * cap;
        float* dst = vt + r * n_keys;
        for (int64_t j = j0; j < j1; ++j) dst[j] = src[slot[j]];
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
  if (first_slot_[s] >= 0) {
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
  const int64_t n_rows = n_rows_;
  const int64_t n_heads = n_heads_;
  auto attend = [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t z = item / n_heads;
      const int64_t row = (z % 2 == 0) ? z / 2 : n_rows - 1 - z / 2;
      AttendRow(row, item % n_heads, q, out);
    }
  };
  // Work: every row scores and sums (its keys x head_dim) per head; bounded
  // above by all keys for every row.
  if (n_rows * key_begin_.back() * n_heads * head_dim_ < kInlineWork) {
    attend(0, n_rows * n_heads);
  } else {
    pool->ParallelFor(n_rows * n_heads, 1, attend);
  }
}

}  // namespace sinkserve::engine
