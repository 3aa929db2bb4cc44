// Steady-state decode steps of the CPU backend allocate nothing: every
// buffer is sized once and reused (a step of a small model takes
// microseconds, and malloc under contention is not free). Own binary, since
// it replaces the global operator new to count.
#include <atomic>
#include <cstdlib>
#include <memory>
#include <new>
#include <numeric>
#include <string>
#include <vector>

#include "engine/backend_test_util.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/gguf/gguf_writer.h"
#include "engine/gguf/model_weights.h"
#include "gtest/gtest.h"

namespace {
std::atomic<int64_t> g_allocations{0};
}  // namespace

void* operator new(std::size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size) { return operator new(size); }
void* operator new(std::size_t size, std::align_val_t align) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  const std::size_t a = static_cast<std::size_t>(align);
  if (void* p = std::aligned_alloc(a, (size + a - 1) / a * a)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size, std::align_val_t align) {
  return operator new(size, align);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

namespace sinkserve::engine {
namespace {

TEST(CpuBackendAllocTest, DecodeStepsAllocateNothing) {
  for (GgmlType type : {GgmlType::kF32, GgmlType::kQ8_0}) {
    for (KvDtype dtype : {KvDtype::kF32, KvDtype::kF16}) {
      for (int threads : {1, 2}) {
        SCOPED_TRACE(testing::Message() << static_cast<int>(type) << " kv " << KvDtypeName(dtype) << " threads "
                                        << threads);
        SyntheticLlamaSpec spec;
        spec.vocab_size = 320;
        spec.threads = 1;
        spec.weight_type = type;
        const std::string path =
            ::testing::TempDir() + "/alloc_test_" + std::to_string(static_cast<int>(type)) + ".gguf";
        ASSERT_TRUE(WriteSyntheticLlama(spec, path).ok());
        auto weights = ModelWeights::Load(path);
        ASSERT_TRUE(weights.ok()) << weights.status();
        CpuBackendOptions options;
        options.threads = threads;
        options.kv_dtype = dtype;
        auto backend = NewCpuBackend(*weights, options);
        ASSERT_TRUE(backend.ok());
        auto kv = (*backend)->NewKvStorage(128);
        ASSERT_TRUE(kv.ok());
        // Prebuilt step inputs, so the loop below allocates only if Forward does.
        const int kSteps = 100;
        std::vector<std::vector<int32_t>> ctx(kSteps), slot(kSteps);
        for (int i = 0; i < kSteps; ++i) {
          ctx[i] = Range(0, i);
          slot[i] = {i};
        }
        const int32_t token[1] = {7};
        StepResult result;
        int allocating_steps = 0;
        for (int i = 0; i < kSteps; ++i) {
          const int64_t before = g_allocations.load();
          ASSERT_TRUE((*backend)
                          ->Forward({{kv->get(), ctx[i], ctx[i], token, slot[i], slot[i],
                                      LogitsMode::kLast}},
                                    &result)
                          .ok());
          // The first steps size the buffers; a growing context still doubles
          // the per-key buffers now and then (at 64 keys here), never every step.
          if (i >= kSteps / 2 && g_allocations.load() != before) ++allocating_steps;
        }
        EXPECT_LE(allocating_steps, 1) << "of " << kSteps / 2 << " steady decode steps";
      }
    }
  }
}

}  // namespace
}  // namespace sinkserve::engine
