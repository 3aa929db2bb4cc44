// Picks tokens on the device so logits need not travel to the host: one block
// per row computes the log-softmax normaliser, the surprisal of a target
// token (SirLLM's score), and a greedy / top-k / top-p / temperature pick.
//
// Truncation thresholds are found by bisection on the logit value (30 passes
// over the row, which sits in L1/L2) instead of a sort, so ties at the k-th
// value keep every tied token. The draw walks kept tokens in id order: the
// cumulative tempered mass first exceeding uniform * total picks the token.
#include <cfloat>
#include <cmath>

#include "kernels/device_types.cuh"

namespace sinkserve::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kBisections = 30;

__device__ float BlockSum(float x, float* scratch) {
  x = WarpSum(x);
  __syncthreads();  // scratch reuse
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = x;
  __syncthreads();
  float total = 0.f;
  for (int i = 0; i < kThreads / 32; ++i) total += scratch[i];
  return total;
}

__device__ float BlockMax(float x, float* scratch) {
  x = WarpMax(x);
  __syncthreads();
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = x;
  __syncthreads();
  float m = -INFINITY;
  for (int i = 0; i < kThreads / 32; ++i) m = fmaxf(m, scratch[i]);
  return m;
}

__global__ void SampleKernel(const float* logits, const int32_t* rows, int vocab,
                             const SampleParams* params, SampleResult* results) {
  __shared__ float scratch[kThreads / 32];
  __shared__ float chunk_mass[kThreads];
  __shared__ int argmax_index;
  const int64_t row = rows != nullptr ? rows[blockIdx.x] : blockIdx.x;
  const float* x = logits + row * vocab;  // (vocab)
  const SampleParams p = params[blockIdx.x];
  const int tid = threadIdx.x;

  float mx = -INFINITY, mn = INFINITY;
  for (int i = tid; i < vocab; i += kThreads) {
    mx = fmaxf(mx, x[i]);
    mn = fminf(mn, x[i]);
  }
  mx = BlockMax(mx, scratch);
  mn = -BlockMax(-mn, scratch);
  float z = 0.f;
  for (int i = tid; i < vocab; i += kThreads) z += expf(x[i] - mx);
  const float log_z = logf(BlockSum(z, scratch));
  // Lowest id among the maxima, as a stable argmax.
  if (tid == 0) argmax_index = vocab;
  __syncthreads();
  for (int i = tid; i < vocab; i += kThreads) {
    if (x[i] == mx) atomicMin(&argmax_index, i);
  }
  __syncthreads();

  int token = argmax_index;
  if (p.temperature > 0.f) {
    // Kept tokens: logit >= cut.
    float cut = mn;
    if (p.top_k > 0 && p.top_k < vocab) {
      float lo = mn, hi = mx;  // count(x >= lo) >= k > count(x > hi)
      for (int it = 0; it < kBisections; ++it) {
        const float mid = 0.5f * (lo + hi);
        float count = 0.f;
        for (int i = tid; i < vocab; i += kThreads) count += x[i] >= mid ? 1.f : 0.f;
        if (BlockSum(count, scratch) >= p.top_k) lo = mid; else hi = mid;
      }
      cut = lo;
    }
    if (p.top_p < 1.f) {
      float kept = 0.f;
      for (int i = tid; i < vocab; i += kThreads) kept += x[i] >= cut ? expf(x[i] - mx) : 0.f;
      const float goal = p.top_p * BlockSum(kept, scratch);
      float lo = cut, hi = mx;  // mass(x >= lo) >= goal
      for (int it = 0; it < kBisections; ++it) {
        const float mid = 0.5f * (lo + hi);
        float mass = 0.f;
        for (int i = tid; i < vocab; i += kThreads) mass += x[i] >= mid ? expf(x[i] - mx) : 0.f;
        if (BlockSum(mass, scratch) >= goal) lo = mid; else hi = mid;
      }
      cut = lo;
    }
    // Tempered mass per contiguous chunk, then a serial scan over chunks.
    const int chunk = (vocab + kThreads - 1) / kThreads;
    const int begin = min(vocab, tid * chunk), end = min(vocab, begin + chunk);
    float mass = 0.f;
    for (int i = begin; i < end; ++i) {
      if (x[i] >= cut) mass += expf((x[i] - mx) / p.temperature);
    }
    chunk_mass[tid] = mass;
    __syncthreads();
    if (tid == 0) {
      float total = 0.f;
      for (int i = 0; i < kThreads; ++i) total += chunk_mass[i];
      float goal = p.uniform * total;
      int pick = argmax_index;  // rounding fallback: the argmax is always kept
      for (int c = 0; c < kThreads; ++c) {
        if (goal < chunk_mass[c]) {
          const int b = min(vocab, c * chunk), e = min(vocab, b + chunk);
          for (int i = b; i < e; ++i) {
            if (x[i] < cut) continue;
            goal -= expf((x[i] - mx) / p.temperature);
            if (goal < 0.f) {
              pick = i;
              break;
            }
          }
          break;
        }
        goal -= chunk_mass[c];
      }
      argmax_index = pick;
    }
    __syncthreads();
    token = argmax_index;
  }
  if (tid == 0) {
    SampleResult r;
    r.token = token;
    r.logprob = x[token] - mx - log_z;
    r.surprisal = (p.target >= 0 && p.target < vocab) ? -(x[p.target] - mx - log_z) : 0.f;
    results[blockIdx.x] = r;
  }
}

}  // namespace

cudaError_t LaunchSample(const float* logits, const int32_t* rows, int n_picks, int vocab,
                         const SampleParams* params, SampleResult* results,
                         cudaStream_t stream) {
  if (n_picks == 0) return cudaSuccess;
  if (vocab <= 0) return cudaErrorInvalidValue;
  SampleKernel<<<n_picks, kThreads, 0, stream>>>(logits, rows, vocab, params, results);
  return cudaGetLastError();
}

}  // namespace sinkserve::kernels
