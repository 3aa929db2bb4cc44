// Large zero-filled host buffers for KV storage, mapped rather than
// malloc'ed: fresh anonymous pages are zero by construction, so a new
// storage costs no memset pass, and transparent huge pages (where the kernel
// allows them) cut the page faults of filling it — a session restore's main
// fixed cost — and the TLB misses of attention's strided reads.
#ifndef SINKSERVE_ENGINE_CPU_HOST_BUFFER_H_
#define SINKSERVE_ENGINE_CPU_HOST_BUFFER_H_

#include <cstddef>

#include "absl/status/statusor.h"

namespace sinkserve::engine {

class HostBuffer {
 public:
  HostBuffer() = default;
  HostBuffer(HostBuffer&& other) noexcept;
  HostBuffer& operator=(HostBuffer&& other) noexcept;
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;
  ~HostBuffer();

  // `bytes` zero bytes (none for 0). RESOURCE_EXHAUSTED when the mapping fails.
  static absl::StatusOr<HostBuffer> Zeroed(size_t bytes);

  template <typename T>
  T* as() {
    return static_cast<T*>(data_);
  }
  template <typename T>
  const T* as() const {
    return static_cast<const T*>(data_);
  }
  size_t size() const { return size_; }

 private:
  HostBuffer(void* data, size_t size, size_t mapped) : data_(data), size_(size), mapped_(mapped) {}

  void* data_ = nullptr;
  size_t size_ = 0;
  size_t mapped_ = 0;  // bytes of the mapping (size_ rounded up), 0 if none
};

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_CPU_HOST_BUFFER_H_
