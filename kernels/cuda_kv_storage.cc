#include "kernels/cuda_kv_storage.h"

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda_check.h"
#include "kernels/ops.h"
#include "memory/status_macros.h"

namespace sinkserve::kernels {

absl::StatusOr<std::unique_ptr<CudaKvStorage>> CudaKvStorage::Create(
    std::shared_ptr<DeviceContext> ctx, int64_t n_layers, int64_t kv_dim, int capacity,
    engine::KvDtype dtype) {
  if (ctx == nullptr) return absl::InvalidArgumentError("null device context");
  if (n_layers <= 0 || kv_dim <= 0 || capacity <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("bad KV storage shape: ", n_layers,
                                                   " layers, kv_dim ", kv_dim,
                                                   ", capacity ", capacity));
  }
  if (engine::KvDtypeBytes(dtype) == 0) return absl::InvalidArgumentError("unknown KV dtype");
  std::unique_ptr<CudaKvStorage> kv(
      new CudaKvStorage(std::move(ctx), n_layers, kv_dim, capacity, dtype));
  SINKSERVE_RETURN_IF_ERROR(kv->ctx_->Activate());
  const size_t bytes = kv->SlotBytes() * static_cast<size_t>(capacity);
  absl::Status status = kv->rows_.Reserve(bytes);
  if (!status.ok()) {
    return absl::Status(status.code(),
                        absl::StrCat("cannot allocate a device KV storage of ", capacity,
                                     " slots (", bytes >> 20, " MiB): ", status.message()));
  }
  // Zeroed, so a slot read before it is written gives zeros, not garbage
  // (and compute-sanitizer's initcheck stays quiet on snapshots of it).
  SINKSERVE_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(kv->rows_.get(), 0, bytes, kv->ctx_->stream()));
  SINKSERVE_RETURN_IF_ERROR(kv->ctx_->Synchronize());
  return kv;
}

size_t CudaKvStorage::SlotBytes() const {
  return static_cast<size_t>(n_layers_) * 2 * kv_dim_ * engine::KvDtypeBytes(dtype_);
}

absl::Status CudaKvStorage::CheckSlots(absl::Span<const int32_t> slots) const {
  for (int32_t slot : slots) {
    if (slot < 0 || slot >= capacity_) {
      return absl::OutOfRangeError(
          absl::StrCat("slot ", slot, " outside KV storage of capacity ", capacity_));
    }
  }
  return absl::OkStatus();
}

absl::Status CudaKvStorage::Transfer(absl::Span<const int32_t> slots, bool gather) const {
  SINKSERVE_RETURN_IF_ERROR(packed_.Reserve(SlotBytes() * slots.size()));
  if (gather) return GatherInto(slots, packed_.get());
  const int n = static_cast<int>(slots.size());
  SINKSERVE_RETURN_IF_ERROR(slots_.Reserve(slots.size() * sizeof(int32_t)));
  SINKSERVE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(slots_.get(), slots.data(),
                                                 slots.size() * sizeof(int32_t),
                                                 cudaMemcpyHostToDevice, ctx_->stream()));
  const int row_units = static_cast<int>(kv_dim_ * engine::KvDtypeBytes(dtype_) / 2);
  SINKSERVE_CUDA_RETURN_IF_ERROR(LaunchScatterSlots(
      packed_.as<uint16_t>(), static_cast<int>(n_layers_), capacity_, row_units,
      slots_.as<int32_t>(), n, rows_.as<uint16_t>(), ctx_->stream()));
  return absl::OkStatus();
}

absl::Status CudaKvStorage::GatherInto(absl::Span<const int32_t> slots, void* out) const {
  const int n = static_cast<int>(slots.size());
  SINKSERVE_RETURN_IF_ERROR(slots_.Reserve(slots.size() * sizeof(int32_t)));
  SINKSERVE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(slots_.get(), slots.data(),
                                                 slots.size() * sizeof(int32_t),
                                                 cudaMemcpyHostToDevice, ctx_->stream()));
  // Rows are moved as 2-byte units whatever the dtype.
  const int row_units = static_cast<int>(kv_dim_ * engine::KvDtypeBytes(dtype_) / 2);
  SINKSERVE_CUDA_RETURN_IF_ERROR(LaunchGatherSlots(
      rows_.as<uint16_t>(), static_cast<int>(n_layers_), capacity_, row_units,
      slots_.as<int32_t>(), n, static_cast<uint16_t*>(out), ctx_->stream()));
  return absl::OkStatus();
}

absl::Status CudaKvStorage::MoveSlots(absl::Span<const std::pair<int32_t, int32_t>> moves) {
  for (const auto& [from, to] : moves) SINKSERVE_RETURN_IF_ERROR(CheckSlots({from, to}));
  SINKSERVE_RETURN_IF_ERROR(ctx_->Activate());
  // A round gathers its sources, then scatters to its destinations: equal to
  // doing its pairs in order as long as no pair reads a slot written earlier
  // in the round and no slot is written twice. Such a pair starts a new
  // round, so any move list keeps the in-order meaning (normal compactions
  // are one round).
  std::vector<int32_t> from, to;
  absl::flat_hash_set<int32_t> written;
  auto flush = [&]() -> absl::Status {
    if (from.empty()) return absl::OkStatus();
    SINKSERVE_RETURN_IF_ERROR(Transfer(from, /*gather=*/true));
    SINKSERVE_RETURN_IF_ERROR(Transfer(to, /*gather=*/false));
    // Errors of this round surface here, naming the call that failed.
    SINKSERVE_RETURN_IF_ERROR(ctx_->Synchronize());
    from.clear();
    to.clear();
    written.clear();
    return absl::OkStatus();
  };
  for (const auto& [f, t] : moves) {
    if (f == t) continue;
    if (written.contains(f) || written.contains(t)) SINKSERVE_RETURN_IF_ERROR(flush());
    from.push_back(f);
    to.push_back(t);
    written.insert(t);
  }
  return flush();
}

absl::Status CudaKvStorage::ExportSlots(absl::Span<const int32_t> slots,
                                        std::string* out) const {
  if (out == nullptr) return absl::InvalidArgumentError("null output");
  SINKSERVE_RETURN_IF_ERROR(CheckSlots(slots));
  out->resize(SlotBytes() * slots.size());
  if (slots.empty()) return absl::OkStatus();
  SINKSERVE_RETURN_IF_ERROR(ctx_->Activate());
  SINKSERVE_RETURN_IF_ERROR(Transfer(slots, /*gather=*/true));
  SINKSERVE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out->data(), packed_.get(), out->size(),
                                                 cudaMemcpyDeviceToHost, ctx_->stream()));
  return ctx_->Synchronize();
}

namespace {

// Rows gathered on the device at capture time, copied to the host by Wait.
// Holds the context, so it may outlive the storage (a session dropped from
// memory while its checkpoint is still being written).
class DeviceRows : public memory::PendingRows {
 public:
  DeviceRows(std::shared_ptr<DeviceContext> ctx, void* rows, size_t bytes, cudaEvent_t gathered)
      : ctx_(std::move(ctx)), rows_(rows), bytes_(bytes), gathered_(gathered) {}
  ~DeviceRows() override { Release(); }

  absl::Status Wait(std::string* out) override {
    if (rows_ == nullptr) return absl::FailedPreconditionError("rows already taken");
    SINKSERVE_RETURN_IF_ERROR(ctx_->Activate());
    out->resize(bytes_);
    const cudaStream_t copy = ctx_->copy_stream();
    absl::Status s = CopyOut(copy, out);
    Release();
    return s;
  }

 private:
  absl::Status CopyOut(cudaStream_t copy, std::string* out) {
    SINKSERVE_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(copy, gathered_, 0));
    // Pageable memory: the call returns once the rows are on the host, and
    // only this (writer) thread waits for it.
    SINKSERVE_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(out->data(), rows_, bytes_, cudaMemcpyDeviceToHost, copy));
    SINKSERVE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(copy));
    return absl::OkStatus();
  }
  void Release() {
    if (rows_ == nullptr) return;
    cudaSetDevice(ctx_->device());
    // Stream-ordered after the copy: no device-wide synchronization.
    cudaFreeAsync(rows_, ctx_->copy_stream());
    cudaEventDestroy(gathered_);
    rows_ = nullptr;
  }

  std::shared_ptr<DeviceContext> ctx_;
  void* rows_;  // (n_layers, 2, n, kv_dim) in the KV dtype, device
  size_t bytes_;
  cudaEvent_t gathered_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<memory::PendingRows>> CudaKvStorage::ExportSlotsAsync(
    absl::Span<const int32_t> slots) const {
  SINKSERVE_RETURN_IF_ERROR(CheckSlots(slots));
  if (slots.empty()) return KvStorage::ExportSlotsAsync(slots);
  SINKSERVE_RETURN_IF_ERROR(ctx_->Activate());
  const size_t bytes = SlotBytes() * slots.size();
  void* rows = nullptr;
  SINKSERVE_CUDA_RETURN_IF_ERROR(cudaMallocAsync(&rows, bytes, ctx_->stream()));
  cudaEvent_t gathered = nullptr;
  absl::Status s = GatherInto(slots, rows);
  if (s.ok()) {
    if (cudaError_t e = cudaEventCreateWithFlags(&gathered, cudaEventDisableTiming);
        e != cudaSuccess) {
      s = absl::InternalError(absl::StrCat("cudaEventCreate: ", cudaGetErrorString(e)));
    } else if (e = cudaEventRecord(gathered, ctx_->stream()); e != cudaSuccess) {
      cudaEventDestroy(gathered);
      s = absl::InternalError(absl::StrCat("cudaEventRecord: ", cudaGetErrorString(e)));
    }
  }
  if (!s.ok()) {
    cudaFreeAsync(rows, ctx_->stream());
    return s;
  }
  return std::make_unique<DeviceRows>(ctx_, rows, bytes, gathered);
}

absl::Status CudaKvStorage::ImportSlots(absl::Span<const int32_t> slots,
                                        std::string_view bytes) {
  SINKSERVE_RETURN_IF_ERROR(CheckSlots(slots));
  const size_t want = SlotBytes() * slots.size();
  if (bytes.size() != want) {
    return absl::InvalidArgumentError(absl::StrCat("KV import of ", slots.size(),
                                                   " slots needs ", want, " bytes, got ",
                                                   bytes.size()));
  }
  absl::flat_hash_set<int32_t> seen;
  for (int32_t slot : slots) {
    if (!seen.insert(slot).second) {
      return absl::InvalidArgumentError(absl::StrCat("slot ", slot, " imported twice"));
    }
  }
  if (slots.empty()) return absl::OkStatus();
  SINKSERVE_RETURN_IF_ERROR(ctx_->Activate());
  SINKSERVE_RETURN_IF_ERROR(packed_.Reserve(want));
  SINKSERVE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(packed_.get(), bytes.data(), want,
                                                 cudaMemcpyHostToDevice, ctx_->stream()));
  SINKSERVE_RETURN_IF_ERROR(Transfer(slots, /*gather=*/false));
  return ctx_->Synchronize();
}

}  // namespace sinkserve::kernels
