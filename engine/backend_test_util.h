// Helpers shared by the backend tests (CPU here, CUDA in kernels/): how far
// two logit rows are apart, and slot/position lists.
#ifndef SINKSERVE_ENGINE_BACKEND_TEST_UTIL_H_
#define SINKSERVE_ENGINE_BACKEND_TEST_UTIL_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "absl/types/span.h"
#include "gtest/gtest.h"

namespace sinkserve::engine {

// max |a - b| / max |b|; infinite when `a` holds a NaN or an infinity, so a
// broken row never passes a tolerance.
inline double MaxRelError(absl::Span<const float> a, absl::Span<const float> b) {
  EXPECT_EQ(a.size(), b.size());
  double diff = 0, scale = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    diff = std::max(diff, std::fabs(double{a[i]} - b[i]));
    scale = std::max(scale, std::fabs(double{b[i]}));
  }
  return scale > 0 ? diff / scale : diff;
}

// begin, begin + 1, ..., end - 1.
inline std::vector<int32_t> Range(int32_t begin, int32_t end) {
  std::vector<int32_t> v(end - begin);
  std::iota(v.begin(), v.end(), begin);
  return v;
}

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_BACKEND_TEST_UTIL_H_
