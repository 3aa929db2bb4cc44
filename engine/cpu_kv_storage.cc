#include "engine/cpu_kv_storage.h"

#include <cstring>
#include <limits>
#include <new>

#include "absl/strings/str_cat.h"
#include "memory/status_macros.h"

namespace sinkserve::engine {

absl::StatusOr<std::unique_ptr<CpuKvStorage>> CpuKvStorage::Create(int64_t n_layers,
                                                                   int64_t kv_dim,
                                                                   int capacity) {
  if (n_layers <= 0 || kv_dim <= 0 || capacity <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("bad KV storage shape: ", n_layers,
                                                   " layers, kv_dim ", kv_dim,
                                                   ", capacity ", capacity));
  }
  // Each of K and V holds n_layers * capacity * kv_dim floats.
  const double floats = static_cast<double>(n_layers) * capacity * kv_dim;
  if (floats > static_cast<double>(std::numeric_limits<ptrdiff_t>::max() / 8)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV storage of ", capacity, " slots is too large"));
  }
  try {
    return std::unique_ptr<CpuKvStorage>(new CpuKvStorage(n_layers, kv_dim, capacity));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cannot allocate KV storage of ", capacity, " slots (",
        static_cast<int64_t>(floats * 8 / (1 << 20)), " MiB)"));
  }
}

CpuKvStorage::CpuKvStorage(int64_t n_layers, int64_t kv_dim, int capacity)
    : n_layers_(n_layers),
      kv_dim_(kv_dim),
      capacity_(capacity),
      k_(static_cast<size_t>(n_layers) * capacity * kv_dim),
      v_(static_cast<size_t>(n_layers) * capacity * kv_dim) {}

absl::Status CpuKvStorage::CheckSlots(absl::Span<const int32_t> slots) const {
  for (int32_t slot : slots) {
    if (slot < 0 || slot >= capacity_) {
      return absl::OutOfRangeError(
          absl::StrCat("slot ", slot, " outside KV storage of capacity ", capacity_));
    }
  }
  return absl::OkStatus();
}

void CpuKvStorage::Write(int64_t layer, int64_t slot, const float* k, const float* v) {
  float* kd = &k_[Offset(layer) + slot];
  float* vd = &v_[Offset(layer) + slot];
  for (int64_t c = 0; c < kv_dim_; ++c) {
    kd[c * capacity_] = k[c];
    vd[c * capacity_] = v[c];
  }
}

void CpuKvStorage::Read(int64_t layer, int64_t slot, float* k, float* v) const {
  const float* ks = &k_[Offset(layer) + slot];
  const float* vs = &v_[Offset(layer) + slot];
  for (int64_t c = 0; c < kv_dim_; ++c) {
    k[c] = ks[c * capacity_];
    v[c] = vs[c * capacity_];
  }
}

absl::Status CpuKvStorage::MoveSlots(
    absl::Span<const std::pair<int32_t, int32_t>> moves) {
  for (const auto& [from, to] : moves) {
    SINKSERVE_RETURN_IF_ERROR(CheckSlots({from, to}));
  }
  // Row by row, so each component row is walked once for all pairs.
  for (int64_t layer = 0; layer < n_layers_; ++layer) {
    for (int64_t c = 0; c < kv_dim_; ++c) {
      float* k = &k_[Offset(layer) + c * capacity_];  // (capacity)
      float* v = &v_[Offset(layer) + c * capacity_];  // (capacity)
      for (const auto& [from, to] : moves) {
        k[to] = k[from];
        v[to] = v[from];
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CpuKvStorage::ExportSlots(absl::Span<const int32_t> slots,
                                       std::string* out) const {
  SINKSERVE_RETURN_IF_ERROR(CheckSlots(slots));
  const size_t row_bytes = kv_dim_ * sizeof(float);
  // (layer, {K, V}, slot index in `slots`, kv_dim)
  out->resize(static_cast<size_t>(n_layers_) * 2 * slots.size() * row_bytes);
  char* dst = out->data();
  std::vector<float> row(kv_dim_);  // (kv_dim)
  for (int64_t layer = 0; layer < n_layers_; ++layer) {
    for (const std::vector<float>* kv : {&k_, &v_}) {
      const float* src = &(*kv)[Offset(layer)];  // (kv_dim, capacity)
      for (int32_t slot : slots) {
        for (int64_t c = 0; c < kv_dim_; ++c) row[c] = src[c * capacity_ + slot];
        std::memcpy(dst, row.data(), row_bytes);
        dst += row_bytes;
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CpuKvStorage::ImportSlots(absl::Span<const int32_t> slots,
                                       std::string_view bytes) {
  SINKSERVE_RETURN_IF_ERROR(CheckSlots(slots));
  const size_t row_bytes = kv_dim_ * sizeof(float);
  const size_t want = static_cast<size_t>(n_layers_) * 2 * slots.size() * row_bytes;
  if (bytes.size() != want) {
    return absl::InvalidArgumentError(absl::StrCat("KV import of ", slots.size(),
                                                   " slots needs ", want, " bytes, got ",
                                                   bytes.size()));
  }
  // memcpy per value: `bytes` carries no alignment guarantee.
  const char* src = bytes.data();
  for (int64_t layer = 0; layer < n_layers_; ++layer) {
    for (std::vector<float>* kv : {&k_, &v_}) {
      float* dst = &(*kv)[Offset(layer)];  // (kv_dim, capacity)
      for (int32_t slot : slots) {
        for (int64_t c = 0; c < kv_dim_; ++c, src += sizeof(float)) {
          std::memcpy(&dst[c * capacity_ + slot], src, sizeof(float));
        }
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace sinkserve::engine
