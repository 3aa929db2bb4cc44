// MatMul speed per weight type: decode (n = 1, memory-bound: compare the
// bytes/s with the machine's read bandwidth, reported as `of_membw`) and
// prefill (n = 512, compute-bound: tokens/s). Weights are random but valid
// blocks of a 11008 x 4096 matrix (a 7B model's FFN); decode rotates over
// enough copies that the last-level cache cannot hold them.
//
//   matmul_bench [--threads=N] [benchmark flags]
//   SINKSERVE_MATMUL_ISA=avx2 matmul_bench   # force a kernel set
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "engine/gguf/fp16.h"
#include "engine/gguf/ggml_types.h"
#include "engine/cpu/matmul.h"
#include "engine/cpu/matmul_internal.h"
#include "engine/cpu/membw.h"
#include "engine/gguf/quant_blocks.h"
#include "engine/cpu/thread_pool.h"

namespace sinkserve::engine {
namespace {

constexpr int64_t kRows = 11008;
constexpr int64_t kCols = 4096;
constexpr int64_t kDecodeBytes = int64_t{512} << 20;  // rotate over this much W

int g_threads = 0;

ThreadPool& Pool() {
  static ThreadPool* pool = new ThreadPool(g_threads);
  return *pool;
}

double MemBw() {
  static const double bw = [] {
    MemBwOptions options;
    options.passes = 3;
    return MeasureReadBandwidth(g_threads, &Pool(), options);
  }();
  return bw;
}

// Random bytes with sane scales: what matters here is the memory traffic
// and the instruction mix, not the values.
void FillRow(GgmlType type, std::mt19937& rng, uint8_t* row, int64_t row_bytes) {
  std::uniform_int_distribution<int> byte(0, 255);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const uint16_t scale = FloatToHalf(0.01f);
  switch (type) {
    case GgmlType::kF32:
      for (int64_t i = 0; i < kCols; ++i) {
        const float v = normal(rng);
        std::memcpy(row + 4 * i, &v, 4);
      }
      return;
    case GgmlType::kF16:
    case GgmlType::kBF16:
      for (int64_t i = 0; i < kCols; ++i) {
        const float v = normal(rng);
        const uint16_t h = type == GgmlType::kF16 ? FloatToHalf(v) : FloatToBf16(v);
        std::memcpy(row + 2 * i, &h, 2);
      }
      return;
    default:
      break;
  }
  for (int64_t i = 0; i < row_bytes; ++i) row[i] = static_cast<uint8_t>(byte(rng));
  const auto set_scales = [&](auto* blocks, int64_t count, auto&& fix) {
    for (int64_t b = 0; b < count; ++b) fix(blocks[b]);
  };
  if (type == GgmlType::kQ8_0) {
    set_scales(reinterpret_cast<BlockQ8_0*>(row), kCols / 32, [&](BlockQ8_0& b) { b.d = scale; });
  } else if (type == GgmlType::kQ4_0) {
    set_scales(reinterpret_cast<BlockQ4_0*>(row), kCols / 32, [&](BlockQ4_0& b) { b.d = scale; });
  } else if (type == GgmlType::kQ4_K) {
    set_scales(reinterpret_cast<BlockQ4_K*>(row), kCols / 256, [&](BlockQ4_K& b) {
      b.d = scale;
      b.dmin = scale;
    });
  } else if (type == GgmlType::kQ6_K) {
    set_scales(reinterpret_cast<BlockQ6_K*>(row), kCols / 256, [&](BlockQ6_K& b) { b.d = scale; });
  }
}

// Copies of one random matrix (the same bytes in each: the point is only to
// spread them over more memory than the caches hold).
struct Weights {
  std::vector<std::unique_ptr<uint8_t[]>> copies;
  std::vector<WeightMatrix> mats;
  int64_t bytes = 0;  // of one copy
};

const Weights& GetWeights(GgmlType type) {
  static std::map<GgmlType, std::unique_ptr<Weights>> cache;
  auto it = cache.find(type);
  if (it != cache.end()) return *it->second;
  cache.clear();  // one type at a time: the F32 set alone is 512 MiB
  auto w = std::make_unique<Weights>();
  const GgmlTypeTraits* traits = FindGgmlType(static_cast<uint32_t>(type));
  const int64_t row_bytes = GgmlRowBytes(*traits, kCols);
  w->bytes = row_bytes * kRows;
  const int64_t copies = std::max<int64_t>(1, (kDecodeBytes + w->bytes - 1) / w->bytes);
  std::mt19937 rng(42);
  for (int64_t c = 0; c < copies; ++c) {
    w->copies.emplace_back(new uint8_t[w->bytes]);
    uint8_t* data = w->copies.back().get();
    if (c == 0) {
      for (int64_t r = 0; r < kRows; ++r) FillRow(type, rng, data + r * row_bytes, row_bytes);
    } else {
      std::memcpy(data, w->copies[0].get(), w->bytes);
    }
    WeightMatrix m;
    m.type = traits;
    m.data = data;
    m.rows = kRows;
    m.cols = kCols;
    m.row_bytes = row_bytes;
    w->mats.push_back(m);
  }
  return *cache.emplace(type, std::move(w)).first->second;
}

void BM_MatMul(benchmark::State& state, GgmlType type, int64_t n) {
  const Weights& w = GetWeights(type);
  std::vector<float> x(n * kCols), y(n * kRows);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& v : x) v = normal(rng);
  size_t next = 0;
  for (auto _ : state) {
    const WeightMatrix& m = w.mats[next];
    next = n == 1 ? (next + 1) % w.mats.size() : 0;
    MatMul(m, x.data(), n, y.data(), &Pool());
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(state.iterations() * w.bytes);
  state.SetItemsProcessed(state.iterations() * n);  // tokens
  state.counters["tok/s"] =
      benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate);
  if (n == 1) {
    state.counters["of_membw"] = benchmark::Counter(
        static_cast<double>(w.bytes) / (MemBw() * 1e9), benchmark::Counter::kIsIterationInvariantRate);
  }
  state.SetLabel(matmul_internal::ActiveKernels().name);
}

}  // namespace
}  // namespace sinkserve::engine

int main(int argc, char** argv) {
  using sinkserve::engine::GgmlType;
  namespace se = sinkserve::engine;
  se::g_threads = se::ThreadPool::DefaultThreads();
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--threads=", 10) == 0) se::g_threads = std::atoi(argv[i] + 10);
  }
  benchmark::Initialize(&argc, argv);
  std::printf("threads=%d kernels=%s membw=%.1f GB/s\n", se::g_threads,
              se::matmul_internal::ActiveKernels().name, se::MemBw());
  const std::pair<const char*, GgmlType> types[] = {
      {"f32", GgmlType::kF32},   {"f16", GgmlType::kF16},   {"bf16", GgmlType::kBF16},
      {"q8_0", GgmlType::kQ8_0}, {"q4_0", GgmlType::kQ4_0}, {"q4_K", GgmlType::kQ4_K},
      {"q6_K", GgmlType::kQ6_K}};
  for (const auto& [name, type] : types) {
    for (int64_t n : {int64_t{1}, int64_t{512}}) {
      const std::string label = std::string(n == 1 ? "decode/" : "prefill/") + name;
      auto* b = benchmark::RegisterBenchmark(label.c_str(), se::BM_MatMul, type, n);
      b->Unit(benchmark::kMillisecond)->UseRealTime();
      // On a shared machine the fastest repetition is the one least
      // disturbed: with --benchmark_repetitions, report it too.
      b->ComputeStatistics("min", [](const std::vector<double>& v) {
        return *std::min_element(v.begin(), v.end());
      });
      if (n > 1) b->MinTime(2.0);
    }
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
