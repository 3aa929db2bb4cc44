// ggml tensor types as GGUF files number them, and their block geometry.
#ifndef SINKSERVE_ENGINE_GGUF_GGML_TYPES_H_
#define SINKSERVE_ENGINE_GGUF_GGML_TYPES_H_

#include <cstdint>
#include <string_view>

namespace sinkserve::engine {

// Numbered exactly as ggml.h's `enum ggml_type` (values are stored in files).
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ2_XXS = 16,
  kIQ2_XS = 17,
  kIQ3_XXS = 18,
  kIQ1_S = 19,
  kIQ4_NL = 20,
  kIQ3_S = 21,
  kIQ2_S = 22,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kIQ1_M = 29,
  kBF16 = 30,
  kTQ1_0 = 34,
  kTQ2_0 = 35,
};

struct GgmlTypeTraits {
  GgmlType type;
  std::string_view name;  // as ggml prints it: "f32", "q8_0", "q4_K", ...
  int64_t block_size;     // elements per block (1 for plain types)
  int64_t type_size;      // bytes per block
};

// Traits of a type read from a file; nullptr for a number ggml does not define.
const GgmlTypeTraits* FindGgmlType(uint32_t type);

// Bytes of a row of `n` elements; -1 if `n` is not a multiple of the block size.
int64_t GgmlRowBytes(const GgmlTypeTraits& traits, int64_t n);

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_GGUF_GGML_TYPES_H_
