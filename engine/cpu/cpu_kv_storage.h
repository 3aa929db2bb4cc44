// KvStorage in host memory: pre-RoPE keys and values in F32, F16 or BF16.
//
// Stored slot-minor, (layer, kv_dim, capacity): component c of every slot's
// key is one contiguous row. Attention consumes keys that way (it scores all
// keys against a query one head component at a time and rotates them pair by
// pair), so when a sequence's cells sit in consecutive slots — the normal
// case — attention reads the storage in place (F32) or converts whole rows
// with SIMD (F16 / BF16) instead of transposing every cached row at every
// layer of every step.
//
// Half-precision storage halves the cache's memory and its read traffic; rows
// are rounded to nearest-even once when written and widened exactly when read,
// so moves, exports and imports never round again.
#ifndef SINKSERVE_ENGINE_CPU_CPU_KV_STORAGE_H_
#define SINKSERVE_ENGINE_CPU_CPU_KV_STORAGE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/backend.h"
#include "engine/cpu/host_buffer.h"

namespace sinkserve::engine {

class CpuKvStorage : public KvStorage {
 public:
  // INVALID_ARGUMENT for a non-positive shape; RESOURCE_EXHAUSTED when the
  // rows would not fit in memory.
  static absl::StatusOr<std::unique_ptr<CpuKvStorage>> Create(
      int64_t n_layers, int64_t kv_dim, int capacity, KvDtype dtype = KvDtype::kF32);

  int capacity() const override { return capacity_; }
  KvDtype dtype() const override { return dtype_; }
  int64_t n_layers() const { return n_layers_; }
  int64_t kv_dim() const { return kv_dim_; }

  absl::Status MoveSlots(absl::Span<const std::pair<int32_t, int32_t>> moves) override;
  absl::Status ExportSlots(absl::Span<const int32_t> slots, std::string* out) const override;
  absl::Status ImportSlots(absl::Span<const int32_t> slots, std::string_view bytes) override;

  // Keys / values of `layer`: (kv_dim, capacity), component c of slot s at
  // [c * capacity() + s]. keys()/values() only for dtype() == kF32,
  // keys16()/values16() (F16 or BF16 bits) only for the half types.
  const float* keys(int64_t layer) const { return k_.as<float>() + Offset(layer); }
  const float* values(int64_t layer) const { return v_.as<float>() + Offset(layer); }
  const uint16_t* keys16(int64_t layer) const { return k_.as<uint16_t>() + Offset(layer); }
  const uint16_t* values16(int64_t layer) const { return v_.as<uint16_t>() + Offset(layer); }

  // Writes / reads the key and value of `slot` in `layer`: k, v (kv_dim),
  // rounded to the storage dtype on write. No bounds checks: the backend
  // validates slots once per step.
  void Write(int64_t layer, int64_t slot, const float* k, const float* v);
  void Read(int64_t layer, int64_t slot, float* k, float* v) const;

 private:
  CpuKvStorage(int64_t n_layers, int64_t kv_dim, int capacity, KvDtype dtype, HostBuffer k,
               HostBuffer v);
  size_t Offset(int64_t layer) const {
    return static_cast<size_t>(layer) * kv_dim_ * capacity_;
  }
  absl::Status CheckSlots(absl::Span<const int32_t> slots) const;
  template <typename T>
  void Move(absl::Span<const std::pair<int32_t, int32_t>> moves);
  template <typename T>
  void Export(absl::Span<const int32_t> slots, char* dst) const;
  template <typename T>
  void Import(absl::Span<const int32_t> slots, const char* src);

  int64_t n_layers_;
  int64_t kv_dim_;
  int capacity_;
  KvDtype dtype_;
  // Elements are float for kF32, F16 or BF16 bits (uint16_t) otherwise.
  HostBuffer k_;  // (layer, kv_dim, capacity), keys before RoPE
  HostBuffer v_;  // (layer, kv_dim, capacity)
};

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_CPU_CPU_KV_STORAGE_H_
