#include "engine/cpu_kv_storage.h"

#include <cstring>
#include <limits>
#include <new>

#include "absl/strings/str_cat.h"
#include "engine/fp16.h"
#include "memory/status_macros.h"

namespace sinkserve::engine {

absl::StatusOr<std::unique_ptr<CpuKvStorage>> CpuKvStorage::Create(int64_t n_layers,
                                                                   int64_t kv_dim,
                                                                   int capacity,
                                                                   KvDtype dtype) {
  if (n_layers <= 0 || kv_dim <= 0 || capacity <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("bad KV storage shape: ", n_layers,
                                                   " layers, kv_dim ", kv_dim,
                                                   ", capacity ", capacity));
  }
  if (KvDtypeBytes(dtype) == 0) return absl::InvalidArgumentError("unknown KV dtype");
  // Each of K and V holds n_layers * capacity * kv_dim elements.
  const double elements = static_cast<double>(n_layers) * capacity * kv_dim;
  const double bytes = elements * 2 * KvDtypeBytes(dtype);
  if (elements > static_cast<double>(std::numeric_limits<ptrdiff_t>::max() / 8)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV storage of ", capacity, " slots is too large"));
  }
  try {
    return std::unique_ptr<CpuKvStorage>(
        new CpuKvStorage(n_layers, kv_dim, capacity, dtype));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cannot allocate KV storage of ", capacity, " slots (",
        static_cast<int64_t>(bytes / (1 << 20)), " MiB)"));
  }
}

CpuKvStorage::CpuKvStorage(int64_t n_layers, int64_t kv_dim, int capacity, KvDtype dtype)
    : n_layers_(n_layers), kv_dim_(kv_dim), capacity_(capacity), dtype_(dtype) {
  const size_t n = static_cast<size_t>(n_layers) * capacity * kv_dim;
  if (dtype == KvDtype::kF32) {
    k32_.resize(n);
    v32_.resize(n);
  } else {
    k16_.resize(n);
    v16_.resize(n);
  }
}

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
  const size_t base = Offset(layer) + slot;
  switch (dtype_) {
    case KvDtype::kF32:
      for (int64_t c = 0; c < kv_dim_; ++c) {
        k32_[base + c * capacity_] = k[c];
        v32_[base + c * capacity_] = v[c];
      }
      break;
    case KvDtype::kF16:
      for (int64_t c = 0; c < kv_dim_; ++c) {
        k16_[base + c * capacity_] = FloatToHalf(k[c]);
        v16_[base + c * capacity_] = FloatToHalf(v[c]);
      }
      break;
    case KvDtype::kBF16:
      for (int64_t c = 0; c < kv_dim_; ++c) {
        k16_[base + c * capacity_] = FloatToBf16(k[c]);
        v16_[base + c * capacity_] = FloatToBf16(v[c]);
      }
      break;
  }
}

void CpuKvStorage::Read(int64_t layer, int64_t slot, float* k, float* v) const {
  const size_t base = Offset(layer) + slot;
  for (int64_t c = 0; c < kv_dim_; ++c) {
    const size_t i = base + c * capacity_;
    switch (dtype_) {
      case KvDtype::kF32:
        k[c] = k32_[i];
        v[c] = v32_[i];
        break;
      case KvDtype::kF16:
        k[c] = HalfToFloat(k16_[i]);
        v[c] = HalfToFloat(v16_[i]);
        break;
      case KvDtype::kBF16:
        k[c] = Bf16ToFloat(k16_[i]);
        v[c] = Bf16ToFloat(v16_[i]);
        break;
    }
  }
}

template <typename T>
void CpuKvStorage::Move(std::vector<T>& k, std::vector<T>& v,
                        absl::Span<const std::pair<int32_t, int32_t>> moves) {
  // Row by row, so each component row is walked once for all pairs.
  for (int64_t layer = 0; layer < n_layers_; ++layer) {
    for (int64_t c = 0; c < kv_dim_; ++c) {
      T* kr = &k[Offset(layer) + c * capacity_];  // (capacity)
      T* vr = &v[Offset(layer) + c * capacity_];  // (capacity)
      for (const auto& [from, to] : moves) {
        kr[to] = kr[from];
        vr[to] = vr[from];
      }
    }
  }
}

absl::Status CpuKvStorage::MoveSlots(
    absl::Span<const std::pair<int32_t, int32_t>> moves) {
  for (const auto& [from, to] : moves) {
    SINKSERVE_RETURN_IF_ERROR(CheckSlots({from, to}));
  }
  if (dtype_ == KvDtype::kF32) {
    Move(k32_, v32_, moves);
  } else {
    Move(k16_, v16_, moves);
  }
  return absl::OkStatus();
}

template <typename T>
void CpuKvStorage::Export(const std::vector<T>& k, const std::vector<T>& v,
                          absl::Span<const int32_t> slots, char* dst) const {
  const size_t row_bytes = kv_dim_ * sizeof(T);
  std::vector<T> row(kv_dim_);  // (kv_dim)
  for (int64_t layer = 0; layer < n_layers_; ++layer) {
    for (const std::vector<T>* kv : {&k, &v}) {
      const T* src = &(*kv)[Offset(layer)];  // (kv_dim, capacity)
      for (int32_t slot : slots) {
        for (int64_t c = 0; c < kv_dim_; ++c) row[c] = src[c * capacity_ + slot];
        std::memcpy(dst, row.data(), row_bytes);
        dst += row_bytes;
      }
    }
  }
}

absl::Status CpuKvStorage::ExportSlots(absl::Span<const int32_t> slots,
                                       std::string* out) const {
  SINKSERVE_RETURN_IF_ERROR(CheckSlots(slots));
  // (layer, {K, V}, slot index in `slots`, kv_dim), in the storage dtype.
  out->resize(static_cast<size_t>(n_layers_) * 2 * slots.size() * kv_dim_ *
              KvDtypeBytes(dtype_));
  if (dtype_ == KvDtype::kF32) {
    Export(k32_, v32_, slots, out->data());
  } else {
    Export(k16_, v16_, slots, out->data());
  }
  return absl::OkStatus();
}

template <typename T>
void CpuKvStorage::Import(std::vector<T>& k, std::vector<T>& v,
                          absl::Span<const int32_t> slots, const char* src) {
  // memcpy per value: the bytes carry no alignment guarantee.
  for (int64_t layer = 0; layer < n_layers_; ++layer) {
    for (std::vector<T>* kv : {&k, &v}) {
      T* dst = &(*kv)[Offset(layer)];  // (kv_dim, capacity)
      for (int32_t slot : slots) {
        for (int64_t c = 0; c < kv_dim_; ++c, src += sizeof(T)) {
          std::memcpy(&dst[c * capacity_ + slot], src, sizeof(T));
        }
      }
    }
  }
}

absl::Status CpuKvStorage::ImportSlots(absl::Span<const int32_t> slots,
                                       std::string_view bytes) {
  SINKSERVE_RETURN_IF_ERROR(CheckSlots(slots));
  const size_t want =
      static_cast<size_t>(n_layers_) * 2 * slots.size() * kv_dim_ * KvDtypeBytes(dtype_);
  if (bytes.size() != want) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV import of ", slots.size(), " ", std::string(KvDtypeName(dtype_)),
        " slots needs ", want, " bytes, got ", bytes.size()));
  }
  if (dtype_ == KvDtype::kF32) {
    Import(k32_, v32_, slots, bytes.data());
  } else {
    Import(k16_, v16_, slots, bytes.data());
  }
  return absl::OkStatus();
}

}  // namespace sinkserve::engine
