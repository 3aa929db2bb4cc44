#include "engine/cpu/matmul.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "engine/cpu/matmul_internal.h"
#include "engine/gguf/quant_blocks.h"
#include "engine/gguf/quant_ref.h"
#include "hwy/targets.h"

namespace sinkserve::engine {
namespace matmul_internal {
namespace {

// Whether the CPU (and OS) runs `isa`'s instructions, whether or not this
// build has kernels for it.
bool CpuRuns(Isa isa) {
  if (isa == Isa::kScalar) return true;
#if defined(__x86_64__) && defined(__GNUC__)
  // Highway's target bits include the OS (XSAVE) support checks.
  const int64_t targets = hwy::SupportedTargets();
  if (isa == Isa::kAvx2) return (targets & HWY_AVX2) != 0;
  return (targets & (HWY_AVX3 | HWY_AVX3_DL)) != 0 && __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}

// One ISA's set: the Highway float kernels beside the intrinsics ones of the
// quantized types; nullptr unless the build has both.
const KernelSet* Compose(const char* name, const FloatKernels* f, const QuantKernels* q) {
  if (f == nullptr || q == nullptr) return nullptr;
  return new KernelSet{name,    q->tile_tokens, f->quantize_q8_0, f->quantize_q8_k, f->f32, f->f16,
                       f->bf16, q->q8_0,        q->q4_0,          q->q4_k,          q->q6_k};
}

constexpr const char* kIsaNames[] = {"scalar", "avx2", "avx512"};

// Only for an ISA the CPU runs: building a set calls into its target's code.
const KernelSet* KernelsFor(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: {
      static const KernelSet* const kSet =
          Compose(kIsaNames[2], HwyFloatKernels(isa), Avx512QuantKernels());
      return kSet;
    }
    case Isa::kAvx2: {
      static const KernelSet* const kSet =
          Compose(kIsaNames[1], HwyFloatKernels(isa), Avx2QuantKernels());
      return kSet;
    }
    case Isa::kScalar:
      break;
  }
  static const KernelSet* const kSet =
      Compose(kIsaNames[0], HwyFloatKernels(Isa::kScalar), ScalarQuantKernels());
  return kSet;
}

// SINKSERVE_MATMUL_ISA=scalar|avx2|avx512 caps the choice (benchmarks, bug
// hunts); an unsupported request falls back to the best supported set.
Isa BestIsa() {
  Isa best = Isa::kScalar;
  for (Isa isa : {Isa::kAvx2, Isa::kAvx512}) {
    if (IsaSupported(isa)) best = isa;
  }
  if (const char* env = std::getenv("SINKSERVE_MATMUL_ISA")) {
    const std::string_view want(env);
    for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
      if (want == kIsaNames[static_cast<int>(isa)] && IsaSupported(isa)) return isa;
    }
  }
  return best;
}

const KernelSet* g_forced = nullptr;

}  // namespace

bool IsaSupported(Isa isa) { return CpuRuns(isa) && KernelsFor(isa) != nullptr; }

const KernelSet& ActiveKernels() {
  if (g_forced != nullptr) return *g_forced;
  static const KernelSet* const kBest = KernelsFor(BestIsa());
  return *kBest;
}

void SetIsaForTest(Isa isa) { g_forced = IsaSupported(isa) ? KernelsFor(isa) : nullptr; }
void ResetIsaForTest() { g_forced = nullptr; }

}  // namespace matmul_internal

namespace {

using matmul_internal::Activations;
using matmul_internal::GemmFn;
using matmul_internal::KernelSet;

// Rough single-core speeds for sizing the thread team: reading W (from
// cache: the matrices small enough for the team size to matter are the ones
// that stay cached between steps) and multiply-adds.
constexpr double kBytesPerNs = 64.0;
constexpr double kMacsPerNs = 30.0;
// Below this much work per thread, waking another thread costs more than it
// saves. Measured on Zen 4: a 512 x 64 F32 matmul (~2 us) is no faster on
// two threads, a 256 x 256 one (~4 us) is 1.9x faster.
constexpr double kMinNsPerThread = 2000.0;
double g_min_ns_per_thread = kMinNsPerThread;
// Threads get whole multiples of this many rows, the largest tile height of
// any kernel, so that no thread ends with a partial tile in mid-matrix.
constexpr int64_t kRowGrain = 16;
// Below this many activation values, quantization runs on the caller alone.
constexpr int64_t kParallelQuantizeValues = 1 << 16;

// Activation buffers of the calling thread, grown as needed and reused so
// that steady-state steps allocate nothing. MatMul is not reentrant per
// thread (pool workers never call it), so one set per thread suffices.
struct Scratch {
  std::vector<int8_t> qs;        // (n, cols)
  std::vector<float> d;          // (n, cols / 32) or (n, cols / 256)
  std::vector<int32_t> neg_sums; // (n, cols / 32)
  std::vector<int16_t> bsums;    // (n, cols / 16)
  std::vector<float> dsums;      // (n, cols / 32)
};

template <class T>
T* Grow(std::vector<T>& v, int64_t size) {
  if (static_cast<int64_t>(v.size()) < size) v.resize(size);
  return v.data();
}

GemmFn GemmFor(const KernelSet& k, GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
      return k.f32;
    case GgmlType::kF16:
      return k.f16;
    case GgmlType::kBF16:
      return k.bf16;
    case GgmlType::kQ8_0:
      return k.q8_0;
    case GgmlType::kQ4_0:
      return k.q4_0;
    case GgmlType::kQ4_K:
      return k.q4_k;
    case GgmlType::kQ6_K:
      return k.q6_k;
    default:
      return nullptr;
  }
}

// Runs fn(begin, end) over [0, n) on up to `threads` threads.
template <class Fn>
void Split(ThreadPool* pool, int threads, int64_t n, int64_t grain, const Fn& fn) {
  if (threads <= 1 || pool == nullptr || n <= grain) {
    fn(0, n);
    return;
  }
  const int64_t grains = (n + grain - 1) / grain;
  const int64_t per_thread = (grains + threads - 1) / threads;
  pool->ParallelFor(n, per_thread * grain, fn);
}

// Quantizes x (n, cols) for the weight type's kernels into `s`.
Activations Prepare(GgmlType type, const float* x, int64_t n, int64_t cols, const KernelSet& k,
                    Scratch& s, ThreadPool* pool) {
  Activations a{};
  a.n = n;
  a.cols = cols;
  const bool k_quant = type == GgmlType::kQ4_K || type == GgmlType::kQ6_K;
  const bool q32 = type == GgmlType::kQ8_0 || type == GgmlType::kQ4_0;
  if (!k_quant && !q32) {
    a.f32 = x;
    return a;
  }
  int8_t* qs = Grow(s.qs, n * cols);
  const int64_t nd = k_quant ? cols / kQK_K : cols / kQK8_0;
  float* d = Grow(s.d, n * nd);
  int32_t* neg_sums = q32 ? Grow(s.neg_sums, n * nd) : nullptr;
  int16_t* bsums = k_quant ? Grow(s.bsums, n * (cols / 16)) : nullptr;
  float* dsums = k_quant ? Grow(s.dsums, n * (cols / 32)) : nullptr;
  const auto rows = [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      if (k_quant) {
        k.quantize_q8_k(x + t * cols, cols, qs + t * cols, d + t * nd, bsums + t * (cols / 16),
                        dsums + t * (cols / 32));
      } else {
        k.quantize_q8_0(x + t * cols, cols, qs + t * cols, d + t * nd, neg_sums + t * nd);
      }
    }
  };
  const int threads = pool == nullptr ? 1 : pool->num_threads();
  // Through one pointer, so that std::function needs no allocation.
  Split(pool, n * cols >= kParallelQuantizeValues ? threads : 1, n, 1,
        [&rows](int64_t begin, int64_t end) { rows(begin, end); });
  a.qs = qs;
  a.d = d;
  a.neg_sums = neg_sums;
  a.bsums = bsums;
  a.dsums = dsums;
  return a;
}

// Row chunks of a decode-sized product. Each worker owns a contiguous run of
// chunks (so its reads stream) and claims them from the front; a worker that
// runs out takes the others' chunks from the back, so a thread that started
// late or runs slower (a busy machine, a sibling hyperthread) does not hold
// everyone up at the barrier. Claims are single atomic compare-exchanges on
// a per-worker (end << 32 | next) word.
struct alignas(64) ChunkRun {
  std::atomic<uint64_t> packed{0};
};

bool TakeFront(ChunkRun& run, uint32_t* chunk) {
  uint64_t v = run.packed.load(std::memory_order_relaxed);
  for (;;) {
    const uint32_t next = static_cast<uint32_t>(v), end = static_cast<uint32_t>(v >> 32);
    if (next >= end) return false;
    if (run.packed.compare_exchange_weak(v, (uint64_t{end} << 32) | (next + 1),
                                         std::memory_order_relaxed)) {
      *chunk = next;
      return true;
    }
  }
}

bool TakeBack(ChunkRun& run, uint32_t* chunk) {
  uint64_t v = run.packed.load(std::memory_order_relaxed);
  for (;;) {
    const uint32_t next = static_cast<uint32_t>(v), end = static_cast<uint32_t>(v >> 32);
    if (next >= end) return false;
    if (run.packed.compare_exchange_weak(v, (uint64_t{end - 1} << 32) | next,
                                         std::memory_order_relaxed)) {
      *chunk = end - 1;
      return true;
    }
  }
}

// Bytes of W per chunk at most: small enough to balance, large enough that
// claiming (one atomic) and the prefetch ramp-up are noise.
constexpr int64_t kMaxChunkBytes = 256 * 1024;
// Chunks per worker at least, when the rows allow it.
constexpr int64_t kChunksPerWorker = 8;

// Per-caller chunk tables, reused so that steady-state steps allocate nothing.
struct ChunkPlan {
  std::vector<int32_t> output;  // (chunks) which product
  std::vector<int64_t> row0;    // (chunks) first row
  std::vector<int64_t> row1;    // (chunks) end row
  std::unique_ptr<ChunkRun[]> runs;  // (workers)
  int runs_size = 0;
};

// Runs the decode-sized products `outs` (same type and width, activations
// `a`) on `threads` workers with chunk claiming as above.
void RunChunked(GemmFn gemm, absl::Span<const MatMulOutput> outs, const Activations& a,
                int threads, ThreadPool* pool) {
  if (threads <= 1) {  // tiny products: no plan, no pool
    for (const MatMulOutput& o : outs) gemm(*o.w, a, 0, o.w->rows, 0, a.n, o.y, o.w->rows);
    return;
  }
  thread_local ChunkPlan plan;
  int64_t total_rows = 0;
  for (const MatMulOutput& o : outs) total_rows += o.w->rows;
  const int64_t row_bytes = outs[0].w->row_bytes;
  const int64_t max_rows =
      std::max<int64_t>(kRowGrain, kMaxChunkBytes / std::max<int64_t>(row_bytes, 1) /
                                       kRowGrain * kRowGrain);
  const int64_t want = (total_rows + threads * kChunksPerWorker - 1) / (threads * kChunksPerWorker);
  const int64_t chunk_rows =
      std::clamp((want + kRowGrain - 1) / kRowGrain * kRowGrain, kRowGrain, max_rows);
  plan.output.clear();
  plan.row0.clear();
  plan.row1.clear();
  for (size_t i = 0; i < outs.size(); ++i) {
    for (int64_t r = 0; r < outs[i].w->rows; r += chunk_rows) {
      plan.output.push_back(static_cast<int32_t>(i));
      plan.row0.push_back(r);
      plan.row1.push_back(std::min(outs[i].w->rows, r + chunk_rows));
    }
  }
  const int64_t chunks = plan.output.size();
  threads = static_cast<int>(std::min<int64_t>(threads, chunks));
  if (threads > 1 && plan.runs_size < threads) {
    plan.runs.reset(new ChunkRun[threads]);
    plan.runs_size = threads;
  }
  // One pointer captured, so that std::function needs no allocation.
  const struct Job {
    GemmFn gemm;
    absl::Span<const MatMulOutput> outs;
    const Activations& a;
    const ChunkPlan& plan;
    int threads;
    void Run(uint32_t c) const {
      const MatMulOutput& o = outs[plan.output[c]];
      gemm(*o.w, a, plan.row0[c], plan.row1[c], 0, a.n, o.y, o.w->rows);
    }
  } job{gemm, outs, a, plan, threads};
  if (threads <= 1) {
    for (int64_t c = 0; c < chunks; ++c) job.Run(static_cast<uint32_t>(c));
    return;
  }
  for (int t = 0; t < threads; ++t) {
    const uint64_t begin = chunks * t / threads, end = chunks * (t + 1) / threads;
    plan.runs[t].packed.store(end << 32 | begin, std::memory_order_relaxed);
  }
  // One item per worker; the pool's barrier publishes every output.
  pool->ParallelFor(threads, 1, [&job](int64_t begin, int64_t end) {
    ChunkRun* runs = job.plan.runs.get();
    for (int64_t t = begin; t < end; ++t) {
      uint32_t c;
      while (TakeFront(runs[t], &c)) job.Run(c);
      for (int k = 1; k < job.threads; ++k) {
        ChunkRun& other = runs[(t + k) % job.threads];
        while (TakeBack(other, &c)) job.Run(c);
      }
    }
  });
}

// Threads worth waking for `ns` of estimated work.
int ThreadsFor(double ns, ThreadPool* pool) {
  const int max_threads = pool == nullptr ? 1 : pool->num_threads();
  if (g_min_ns_per_thread <= 0) return max_threads;
  return static_cast<int>(
      std::clamp(ns / g_min_ns_per_thread, 1.0, static_cast<double>(max_threads)));
}

double EstimatedNs(const WeightMatrix& w, int64_t n) {
  return static_cast<double>(w.rows) * w.row_bytes / kBytesPerNs +
         static_cast<double>(w.rows) * w.cols * n / kMacsPerNs;
}

}  // namespace

void matmul_internal::SetMinNsPerThreadForTest(double ns) {
  g_min_ns_per_thread = ns < 0 ? kMinNsPerThread : ns;
}

void MatMul(const WeightMatrix& w, const float* x, int64_t n, float* y, ThreadPool* pool) {
  const MatMulOutput out{&w, y};
  MatMulFused({&out, 1}, x, n, pool);
}

void MatMulFused(absl::Span<const MatMulOutput> outs, const float* x, int64_t n,
                 ThreadPool* pool) {
  if (n <= 0 || outs.empty()) return;
  const KernelSet& k = matmul_internal::ActiveKernels();
  const WeightMatrix& w0 = *outs[0].w;
  bool same = true;
  for (const MatMulOutput& o : outs) {
    same = same && o.w->type == w0.type && o.w->cols == w0.cols;
  }
  if (!same) {
    for (const MatMulOutput& o : outs) MatMulFused({&o, 1}, x, n, pool);
    return;
  }
  const GemmFn gemm = w0.type == nullptr ? nullptr : GemmFor(k, w0.type->type);
  if (gemm == nullptr || w0.cols <= 0) {
    // Not reachable through FromTensor; make misuse visible, not fatal.
    const float fill = w0.cols == 0 ? 0.0f : std::numeric_limits<float>::quiet_NaN();
    for (const MatMulOutput& o : outs) std::fill(o.y, o.y + n * o.w->rows, fill);
    return;
  }
  thread_local Scratch scratch;
  const Activations a = Prepare(w0.type->type, x, n, w0.cols, k, scratch, pool);

  // Decode-sized batches (one token tile): every thread streams its own
  // chunks of rows of all the matrices, W read once.
  if (n <= k.tile_tokens) {
    double ns = 0;
    for (const MatMulOutput& o : outs) ns += EstimatedNs(*o.w, n);
    RunChunked(gemm, outs, a, ThreadsFor(ns, pool), pool);
    return;
  }
  for (const MatMulOutput& o : outs) {
    const WeightMatrix& w = *o.w;
    if (w.rows <= 0) continue;
    const int threads = ThreadsFor(EstimatedNs(w, n), pool);
    // Split output rows (each thread streams its own part of W once and meets
    // every token tile) unless there are too few rows to go round, as for a
    // small matrix over a long prompt; then split tokens.
    const int64_t row_tiles = (w.rows + kRowGrain - 1) / kRowGrain;
    // One pointer captured, so that std::function needs no allocation.
    const struct {
      GemmFn gemm;
      const WeightMatrix& w;
      const Activations& a;
      int64_t n;
      float* y;
    } job{gemm, w, a, n, o.y};
    if (row_tiles >= 2 * threads) {
      Split(pool, threads, w.rows, kRowGrain, [&job](int64_t begin, int64_t end) {
        job.gemm(job.w, job.a, begin, end, 0, job.n, job.y, job.w.rows);
      });
    } else {
      Split(pool, threads, n, k.tile_tokens, [&job](int64_t begin, int64_t end) {
        job.gemm(job.w, job.a, 0, job.w.rows, begin, end, job.y, job.w.rows);
      });
    }
  }
}

}  // namespace sinkserve::engine
