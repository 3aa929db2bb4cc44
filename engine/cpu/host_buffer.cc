#include "engine/cpu/host_buffer.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace sinkserve::engine {
namespace {

// Buffers at least this large are advised to use huge pages; below it the
// rounding would waste more than it saves.
constexpr size_t kHugePageBytes = size_t{2} << 20;

}  // namespace

HostBuffer::HostBuffer(HostBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      mapped_(std::exchange(other.mapped_, 0)) {}

HostBuffer& HostBuffer::operator=(HostBuffer&& other) noexcept {
  if (this != &other) {
    if (mapped_ != 0) munmap(data_, mapped_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    mapped_ = std::exchange(other.mapped_, 0);
  }
  return *this;
}

HostBuffer::~HostBuffer() {
  if (mapped_ != 0) munmap(data_, mapped_);
}

absl::StatusOr<HostBuffer> HostBuffer::Zeroed(size_t bytes) {
  if (bytes == 0) return HostBuffer();
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t unit = bytes >= kHugePageBytes ? kHugePageBytes : page;
  if (bytes > SIZE_MAX - unit) {
    return absl::ResourceExhaustedError(absl::StrCat("cannot map ", bytes, " bytes"));
  }
  const size_t mapped = (bytes + unit - 1) / unit * unit;
  // Huge pages need 2 MiB-aligned ranges: map one unit more, trim both ends.
  const size_t slack = unit == kHugePageBytes ? unit : 0;
  void* raw = mmap(nullptr, mapped + slack, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot map ", mapped >> 20, " MiB: ", std::strerror(errno)));
  }
  char* data = static_cast<char*>(raw);
  if (slack != 0) {
    const uintptr_t address = reinterpret_cast<uintptr_t>(raw);
    const size_t head = (unit - address % unit) % unit;
    if (head != 0) munmap(raw, head);
    if (slack - head != 0) munmap(data + head + mapped, slack - head);
    data += head;
    // Advice only: without transparent huge pages this fails and the buffer
    // works with small pages.
    (void)madvise(data, mapped, MADV_HUGEPAGE);
  }
  return HostBuffer(data, bytes, mapped);
}

}  // namespace sinkserve::engine
