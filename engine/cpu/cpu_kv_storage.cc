#include "engine/cpu/cpu_kv_storage.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/gguf/fp16.h"
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
  const size_t buffer_bytes = static_cast<size_t>(elements) * KvDtypeBytes(dtype);
  absl::StatusOr<HostBuffer> k = HostBuffer::Zeroed(buffer_bytes);
  absl::StatusOr<HostBuffer> v =
      k.ok() ? HostBuffer::Zeroed(buffer_bytes) : absl::StatusOr<HostBuffer>(k.status());
  if (!v.ok()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cannot allocate KV storage of ", capacity, " slots (",
        static_cast<int64_t>(bytes / (1 << 20)), " MiB): ", v.status().message()));
  }
  return std::unique_ptr<CpuKvStorage>(
      new CpuKvStorage(n_layers, kv_dim, capacity, dtype, *std::move(k), *std::move(v)));
}

CpuKvStorage::CpuKvStorage(int64_t n_layers, int64_t kv_dim, int capacity, KvDtype dtype,
                           HostBuffer k, HostBuffer v)
    : n_layers_(n_layers),
      kv_dim_(kv_dim),
      capacity_(capacity),
      dtype_(dtype),
      k_(std::move(k)),
      v_(std::move(v)) {}

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
    case KvDtype::kF32: {
      float* kd = k_.as<float>() + base;  // (kv_dim) at stride capacity
      float* vd = v_.as<float>() + base;
      for (int64_t c = 0; c < kv_dim_; ++c) {
        kd[c * capacity_] = k[c];
        vd[c * capacity_] = v[c];
      }
      break;
    }
    case KvDtype::kF16: {
      uint16_t* kd = k_.as<uint16_t>() + base;
      uint16_t* vd = v_.as<uint16_t>() + base;
      for (int64_t c = 0; c < kv_dim_; ++c) {
        kd[c * capacity_] = FloatToHalf(k[c]);
        vd[c * capacity_] = FloatToHalf(v[c]);
      }
      break;
    }
    case KvDtype::kBF16: {
      uint16_t* kd = k_.as<uint16_t>() + base;
      uint16_t* vd = v_.as<uint16_t>() + base;
      for (int64_t c = 0; c < kv_dim_; ++c) {
        kd[c * capacity_] = FloatToBf16(k[c]);
        vd[c * capacity_] = FloatToBf16(v[c]);
      }
      break;
    }
  }
}

void CpuKvStorage::Read(int64_t layer, int64_t slot, float* k, float* v) const {
  const size_t base = Offset(layer) + slot;
  for (int64_t c = 0; c < kv_dim_; ++c) {
    const size_t i = base + c * capacity_;
    switch (dtype_) {
      case KvDtype::kF32:
        k[c] = k_.as<float>()[i];
        v[c] = v_.as<float>()[i];
        break;
      case KvDtype::kF16:
        k[c] = HalfToFloat(k_.as<uint16_t>()[i]);
        v[c] = HalfToFloat(v_.as<uint16_t>()[i]);
        break;
      case KvDtype::kBF16:
        k[c] = Bf16ToFloat(k_.as<uint16_t>()[i]);
        v[c] = Bf16ToFloat(v_.as<uint16_t>()[i]);
        break;
    }
  }
}

template <typename T>
void CpuKvStorage::Move(absl::Span<const std::pair<int32_t, int32_t>> moves) {
  // Row by row, so each component row is walked once for all pairs.
  for (int64_t layer = 0; layer < n_layers_; ++layer) {
    for (int64_t c = 0; c < kv_dim_; ++c) {
      T* kr = k_.as<T>() + Offset(layer) + c * capacity_;  // (capacity)
      T* vr = v_.as<T>() + Offset(layer) + c * capacity_;  // (capacity)
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
    Move<float>(moves);
  } else {
    Move<uint16_t>(moves);
  }
  return absl::OkStatus();
}

// Export and Import transpose between (slot, kv_dim) rows and the storage's
// (kv_dim, capacity) columns a block of slots at a time: each component row
// of the storage is then touched once per block rather than once per slot,
// which keeps a whole-session restore far from cache-miss bound.
constexpr size_t kTransposeBlock = 32;

template <typename T>
void CpuKvStorage::Export(absl::Span<const int32_t> slots, char* dst) const {
  const size_t row_bytes = kv_dim_ * sizeof(T);
  std::vector<T> rows(kTransposeBlock * kv_dim_);  // (block, kv_dim)
  for (int64_t layer = 0; layer < n_layers_; ++layer) {
    for (const HostBuffer* kv : {&k_, &v_}) {
      const T* src = kv->as<T>() + Offset(layer);  // (kv_dim, capacity)
      for (size_t b = 0; b < slots.size(); b += kTransposeBlock) {
        const size_t n = std::min(kTransposeBlock, slots.size() - b);
        for (int64_t c = 0; c < kv_dim_; ++c) {
          const T* column = src + c * capacity_;
          for (size_t j = 0; j < n; ++j) rows[j * kv_dim_ + c] = column[slots[b + j]];
        }
        std::memcpy(dst, rows.data(), n * row_bytes);
        dst += n * row_bytes;
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
    Export<float>(slots, out->data());
  } else {
    Export<uint16_t>(slots, out->data());
  }
  return absl::OkStatus();
}

template <typename T>
void CpuKvStorage::Import(absl::Span<const int32_t> slots, const char* src) {
  const size_t row_bytes = kv_dim_ * sizeof(T);
  // The bytes carry no alignment guarantee: copy a block of rows out first.
  std::vector<T> rows(kTransposeBlock * kv_dim_);  // (block, kv_dim)
  for (int64_t layer = 0; layer < n_layers_; ++layer) {
    for (HostBuffer* kv : {&k_, &v_}) {
      T* dst = kv->as<T>() + Offset(layer);  // (kv_dim, capacity)
      for (size_t b = 0; b < slots.size(); b += kTransposeBlock) {
        const size_t n = std::min(kTransposeBlock, slots.size() - b);
        std::memcpy(rows.data(), src, n * row_bytes);
        src += n * row_bytes;
        for (int64_t c = 0; c < kv_dim_; ++c) {
          T* column = dst + c * capacity_;
          for (size_t j = 0; j < n; ++j) column[slots[b + j]] = rows[j * kv_dim_ + c];
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
    Import<float>(slots, bytes.data());
  } else {
    Import<uint16_t>(slots, bytes.data());
  }
  return absl::OkStatus();
}

}  // namespace sinkserve::engine
