// KvStorage in device memory: one arena of `capacity` slots per sequence.
//
// Laid out (layer, {K, V}, slot, kv_dim), slot-major, so a new token's row
// is one contiguous write, attention reads a head of a key as one coalesced
// run, and ExportSlots' layout (layer, {K, V}, slot index, kv_dim) is a
// plain gather: snapshots are byte-compatible with any storage of the same
// dtype, whichever backend made it.
#ifndef SINKSERVE_KERNELS_CUDA_KV_STORAGE_H_
#define SINKSERVE_KERNELS_CUDA_KV_STORAGE_H_

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
#include "kernels/device_buffer.h"
#include "kernels/device_context.h"

namespace sinkserve::kernels {

class CudaKvStorage : public engine::KvStorage {
 public:
  // INVALID_ARGUMENT for a non-positive shape; RESOURCE_EXHAUSTED when the
  // device has no room.
  static absl::StatusOr<std::unique_ptr<CudaKvStorage>> Create(
      std::shared_ptr<DeviceContext> ctx, int64_t n_layers, int64_t kv_dim, int capacity,
      engine::KvDtype dtype);

  int capacity() const override { return capacity_; }
  engine::KvDtype dtype() const override { return dtype_; }
  int64_t n_layers() const { return n_layers_; }
  int64_t kv_dim() const { return kv_dim_; }
  const DeviceContext* context() const { return ctx_.get(); }
  // (layer, {K, V}, capacity, kv_dim) in dtype().
  void* data() const { return rows_.get(); }

  absl::Status MoveSlots(absl::Span<const std::pair<int32_t, int32_t>> moves) override;
  absl::Status ExportSlots(absl::Span<const int32_t> slots, std::string* out) const override;
  // Gathers the rows into a buffer of their own on the compute stream (so
  // later steps cannot change them) and returns at once; Wait() copies them
  // to the host on the context's copy stream, from the waiting thread.
  absl::StatusOr<std::unique_ptr<memory::PendingRows>> ExportSlotsAsync(
      absl::Span<const int32_t> slots) const override;
  absl::Status ImportSlots(absl::Span<const int32_t> slots, std::string_view bytes) override;

 private:
  CudaKvStorage(std::shared_ptr<DeviceContext> ctx, int64_t n_layers, int64_t kv_dim,
                int capacity, engine::KvDtype dtype)
      : ctx_(std::move(ctx)), n_layers_(n_layers), kv_dim_(kv_dim), capacity_(capacity),
        dtype_(dtype) {}
  absl::Status CheckSlots(absl::Span<const int32_t> slots) const;
  // Bytes of one slot's rows across all layers, K and V.
  size_t SlotBytes() const;
  // Uploads `slots` and gathers (gather) or scatters their rows through
  // packed_ (n_layers, 2, slots.size(), kv_dim).
  absl::Status Transfer(absl::Span<const int32_t> slots, bool gather) const;
  // Transfer's gather into `out` (n_layers, 2, slots.size(), kv_dim) instead
  // of packed_.
  absl::Status GatherInto(absl::Span<const int32_t> slots, void* out) const;

  std::shared_ptr<DeviceContext> ctx_;
  int64_t n_layers_;
  int64_t kv_dim_;
  int capacity_;
  engine::KvDtype dtype_;
  DeviceBuffer rows_;
  // Scratch for moves and snapshots, grown on demand.
  mutable DeviceBuffer slots_;   // (n) int32
  mutable DeviceBuffer packed_;  // (n_layers, 2, n, kv_dim)
};

}  // namespace sinkserve::kernels

#endif  // SINKSERVE_KERNELS_CUDA_KV_STORAGE_H_
