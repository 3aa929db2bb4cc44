// CRC-32C (Castagnoli, polynomial 0x1EDC6F41, reflected), the checksum of
// every snapshot record. Abseil 20220623 has no absl/crc and RocksDB keeps its
// crc32c out of the public headers, so sinkserve carries its own: SSE4.2's
// crc32 instruction where the CPU has it, slicing-by-8 tables otherwise. Both
// give identical results (tested against the RFC 3720 vectors).
#ifndef SINKSERVE_MEMORY_CRC32C_H_
#define SINKSERVE_MEMORY_CRC32C_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace sinkserve::memory::crc32c {

// CRC of `data` appended to a message whose CRC is `crc`: Extend(Value(a), b)
// == Value(a + b), and Extend(0, x) == Value(x).
uint32_t Extend(uint32_t crc, const void* data, size_t n);

inline uint32_t Value(std::string_view data) {
  return Extend(0, data.data(), data.size());
}
inline uint32_t Extend(uint32_t crc, std::string_view data) {
  return Extend(crc, data.data(), data.size());
}

// The two implementations behind Extend, exposed for tests and benchmarks.
// ExtendHardware must only be called when HasHardware() is true.
uint32_t ExtendPortable(uint32_t crc, const void* data, size_t n);
uint32_t ExtendHardware(uint32_t crc, const void* data, size_t n);
bool HasHardware();

}  // namespace sinkserve::memory::crc32c

#endif  // SINKSERVE_MEMORY_CRC32C_H_
