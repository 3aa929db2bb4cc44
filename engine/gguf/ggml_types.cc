#include "engine/gguf/ggml_types.h"

#include <array>
#include <cstddef>

namespace sinkserve::engine {
namespace {

// Block geometry from ggml.c's type_traits table and the block structs of
// ggml-common.h. Numbers that ggml has retired (4, 5, 31-33, 36-38) are absent
// on purpose: files that use them cannot be read by current ggml either.
constexpr GgmlTypeTraits kTraits[] = {
    {GgmlType::kF32, "f32", 1, 4},
    {GgmlType::kF16, "f16", 1, 2},
    {GgmlType::kQ4_0, "q4_0", 32, 18},
    {GgmlType::kQ4_1, "q4_1", 32, 20},
    {GgmlType::kQ5_0, "q5_0", 32, 22},
    {GgmlType::kQ5_1, "q5_1", 32, 24},
    {GgmlType::kQ8_0, "q8_0", 32, 34},
    {GgmlType::kQ8_1, "q8_1", 32, 36},
    {GgmlType::kQ2_K, "q2_K", 256, 84},
    {GgmlType::kQ3_K, "q3_K", 256, 110},
    {GgmlType::kQ4_K, "q4_K", 256, 144},
    {GgmlType::kQ5_K, "q5_K", 256, 176},
    {GgmlType::kQ6_K, "q6_K", 256, 210},
    {GgmlType::kQ8_K, "q8_K", 256, 292},
    {GgmlType::kIQ2_XXS, "iq2_xxs", 256, 66},
    {GgmlType::kIQ2_XS, "iq2_xs", 256, 74},
    {GgmlType::kIQ3_XXS, "iq3_xxs", 256, 98},
    {GgmlType::kIQ1_S, "iq1_s", 256, 50},
    {GgmlType::kIQ4_NL, "iq4_nl", 32, 18},
    {GgmlType::kIQ3_S, "iq3_s", 256, 110},
    {GgmlType::kIQ2_S, "iq2_s", 256, 82},
    {GgmlType::kIQ4_XS, "iq4_xs", 256, 136},
    {GgmlType::kI8, "i8", 1, 1},
    {GgmlType::kI16, "i16", 1, 2},
    {GgmlType::kI32, "i32", 1, 4},
    {GgmlType::kI64, "i64", 1, 8},
    {GgmlType::kF64, "f64", 1, 8},
    {GgmlType::kIQ1_M, "iq1_m", 256, 56},
    {GgmlType::kBF16, "bf16", 1, 2},
    {GgmlType::kTQ1_0, "tq1_0", 256, 54},
    {GgmlType::kTQ2_0, "tq2_0", 256, 66},
};

constexpr uint32_t kMaxTypeNumber = 35;

// Direct lookup by number; built once from kTraits so the table above stays
// the single source of truth.
const std::array<const GgmlTypeTraits*, kMaxTypeNumber + 1>& ByNumber() {
  static const auto* table = [] {
    auto* t = new std::array<const GgmlTypeTraits*, kMaxTypeNumber + 1>();
    t->fill(nullptr);
    for (const GgmlTypeTraits& traits : kTraits) {
      (*t)[static_cast<uint32_t>(traits.type)] = &traits;
    }
    return t;
  }();
  return *table;
}

}  // namespace

const GgmlTypeTraits* FindGgmlType(uint32_t type) {
  if (type > kMaxTypeNumber) return nullptr;
  return ByNumber()[type];
}

int64_t GgmlRowBytes(const GgmlTypeTraits& traits, int64_t n) {
  if (n < 0 || n % traits.block_size != 0) return -1;
  const int64_t blocks = n / traits.block_size;
  // A row longer than any file could hold is as unusable as a ragged one.
  if (blocks > INT64_MAX / traits.type_size) return -1;
  return blocks * traits.type_size;
}

}  // namespace sinkserve::engine
