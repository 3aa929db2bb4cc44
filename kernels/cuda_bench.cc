// cuda_bench: speed of the CUDA backend against the hardware's floor.
//
//   cuda_bench --model M.gguf [--weights f16|bf16|f32] [--kv f16|bf16|f32]
//       [--caches 256,512,1024,2048,4096] [--batches 1,8,32,64]
//       [--batch-cache 1024] [--prefill 512] [--steps 32] [--recompute 1]
//       [--graphs 0|1] [--flash 0|1]
//
// Measures, in one process: the device copy bandwidth (a large device-to-
// device copy, bytes read + written) and the cuBLAS GEMM rate in the weight
// type; per-token decode latency with a StreamingLLM cache of each size
// (steady state: the cache stays full, each step attends to cache-1 cells
// plus the new token) and the recompute baseline (the window re-prefilled
// for every token); batched decode; prefill throughput (at --prefill and 4x
// it; --flash 0 forces the CUDA-core prefill attention kernel instead of the
// tensor-core one, for A/B runs). Each latency is
// printed with its floor: (weight bytes + KV bytes read) / copy bandwidth.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "engine/gguf/model_weights.h"
#include "kernels/cuda_backend.h"
#include "kernels/ops.h"

namespace {

using sinkserve::engine::Backend;
using sinkserve::engine::KvDtype;
using sinkserve::engine::KvStorage;
using sinkserve::engine::LogitsMode;
using sinkserve::engine::SequenceStep;
using sinkserve::engine::StepResult;
using Clock = std::chrono::steady_clock;

std::vector<int> ParseList(const char* s) {
  std::vector<int> v;
  for (const char* p = s; *p != '\0';) {
    v.push_back(std::atoi(p));
    const char* comma = std::strchr(p, ',');
    if (comma == nullptr) break;
    p = comma + 1;
  }
  return v;
}

bool ParseDtype(const char* s, KvDtype* out) {
  if (std::strcmp(s, "f32") == 0) *out = KvDtype::kF32;
  else if (std::strcmp(s, "f16") == 0) *out = KvDtype::kF16;
  else if (std::strcmp(s, "bf16") == 0) *out = KvDtype::kBF16;
  else return false;
  return true;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

#define CHECK_OK(expr)                                                        \
  do {                                                                        \
    auto status_ = (expr);                                                    \
    if (!status_.ok()) {                                                      \
      std::fprintf(stderr, "%s: %s\n", #expr, status_.ToString().c_str());    \
      return 1;                                                               \
    }                                                                         \
  } while (0)
#define CHECK_CUDA(expr)                                                      \
  do {                                                                        \
    cudaError_t e_ = (expr);                                                  \
    if (e_ != cudaSuccess) {                                                  \
      std::fprintf(stderr, "%s: %s\n", #expr, cudaGetErrorString(e_));       \
      return 1;                                                               \
    }                                                                         \
  } while (0)

// Device-to-device copy rate, counting bytes read and written (GB/s).
int CopyBandwidth(double* gbps) {
  const size_t bytes = size_t{2} << 30;
  void *a = nullptr, *b = nullptr;
  CHECK_CUDA(cudaMalloc(&a, bytes));
  CHECK_CUDA(cudaMalloc(&b, bytes));
  CHECK_CUDA(cudaMemset(a, 1, bytes));
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  std::vector<double> times;
  for (int i = 0; i < 12; ++i) {
    CHECK_CUDA(cudaEventRecord(start));
    CHECK_CUDA(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
    CHECK_CUDA(cudaEventRecord(stop));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
    if (i >= 2) times.push_back(ms);
  }
  *gbps = 2.0 * bytes / (Median(times) * 1e-3) / 1e9;
  cudaFree(a);
  cudaFree(b);
  return 0;
}

// cuBLAS rate of an n^3 product in `type` with f32 accumulation (TFLOP/s),
// on random-ish (non-zero) data.
int GemmRate(cudaDataType type, int n, double* tflops) {
  const size_t elem = type == CUDA_R_32F ? 4 : 2;
  std::vector<uint16_t> host(static_cast<size_t>(n) * n * elem / 2);
  uint32_t x = 12345;
  for (auto& h : host) {
    x = x * 1664525u + 1013904223u;
    h = static_cast<uint16_t>(0x3000 | ((x >> 16) & 0x0fff));  // small normal halves
  }
  void *a = nullptr, *b = nullptr, *c = nullptr;
  CHECK_CUDA(cudaMalloc(&a, host.size() * 2));
  CHECK_CUDA(cudaMalloc(&b, host.size() * 2));
  CHECK_CUDA(cudaMalloc(&c, static_cast<size_t>(n) * n * 4));
  CHECK_CUDA(cudaMemcpy(a, host.data(), host.size() * 2, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(b, host.data(), host.size() * 2, cudaMemcpyHostToDevice));
  cublasHandle_t handle;
  if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) return 1;
  const float alpha = 1, beta = 0;
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  std::vector<double> times;
  for (int i = 0; i < 8; ++i) {
    CHECK_CUDA(cudaEventRecord(start));
    if (cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &alpha, a, type, n, b, type, n,
                     &beta, c, CUDA_R_32F, n, CUBLAS_COMPUTE_32F,
                     CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS) {
      return 1;
    }
    CHECK_CUDA(cudaEventRecord(stop));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
    if (i >= 2) times.push_back(ms);
  }
  *tflops = 2.0 * n * n * static_cast<double>(n) / (Median(times) * 1e-3) / 1e12;
  cublasDestroy(handle);
  cudaFree(a);
  cudaFree(b);
  cudaFree(c);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model;
  KvDtype weights_type = KvDtype::kF16, kv_type = KvDtype::kF16;
  std::vector<int> caches = {256, 512, 1024, 2048, 4096}, batches = {1, 8, 32, 64};
  int batch_cache = 1024, prefill = 512, steps = 32, recompute = 1, graphs = 0, flash = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    const char* k = argv[i];
    const char* v = argv[i + 1];
    if (!std::strcmp(k, "--model")) model = v;
    else if (!std::strcmp(k, "--weights") && ParseDtype(v, &weights_type)) {}
    else if (!std::strcmp(k, "--kv") && ParseDtype(v, &kv_type)) {}
    else if (!std::strcmp(k, "--caches")) caches = ParseList(v);
    else if (!std::strcmp(k, "--batches")) batches = ParseList(v);
    else if (!std::strcmp(k, "--batch-cache")) batch_cache = std::atoi(v);
    else if (!std::strcmp(k, "--prefill")) prefill = std::atoi(v);
    else if (!std::strcmp(k, "--steps")) steps = std::atoi(v);
    else if (!std::strcmp(k, "--recompute")) recompute = std::atoi(v);
    else if (!std::strcmp(k, "--graphs")) graphs = std::atoi(v);
    else if (!std::strcmp(k, "--flash")) flash = std::atoi(v);
    else {
      std::fprintf(stderr, "cuda_bench: unknown or bad flag %s %s\n", k, v);
      return 2;
    }
  }
  if (model.empty() || steps < 1 || prefill < 1 || batch_cache < 2 || caches.empty() ||
      *std::min_element(caches.begin(), caches.end()) < 2) {
    std::fprintf(stderr, "usage: cuda_bench --model M.gguf [flags]; see the source header\n");
    return 2;
  }
  double bandwidth = 0, gemm = 0;
  if (CopyBandwidth(&bandwidth) != 0) return 1;
  const cudaDataType gemm_type = weights_type == KvDtype::kF32  ? CUDA_R_32F
                                 : weights_type == KvDtype::kF16 ? CUDA_R_16F
                                                                 : CUDA_R_16BF;
  if (GemmRate(gemm_type, 8192, &gemm) != 0) return 1;
  std::printf("device copy bandwidth %.0f GB/s (read + write); GEMM %.0f TFLOP/s\n",
              bandwidth, gemm);

  auto weights = sinkserve::engine::ModelWeights::Load(model);
  CHECK_OK(weights.status());
  const auto& c = (*weights)->config();
  sinkserve::kernels::CudaBackendOptions options;
  options.weight_dtype = weights_type;
  options.kv_dtype = kv_type;
  options.cuda_graphs = graphs != 0;
  options.flash_prefill = flash != 0;
  const auto load_start = Clock::now();
  auto backend_or = sinkserve::kernels::NewCudaBackend(*weights, options);
  CHECK_OK(backend_or.status());
  Backend* backend = backend_or->get();
  // Which prefill attention kernel the backend takes for this model and KV type.
  const bool flash_path =
      flash != 0 &&
      sinkserve::kernels::FlashPrefillAttentionSupported(
          {static_cast<int>(c.n_heads), static_cast<int>(c.n_kv_heads),
           static_cast<int>(c.head_dim), static_cast<int>(c.n_layers), 0, 1.f},
          kv_type == KvDtype::kF16    ? sinkserve::kernels::DType::kF16
          : kv_type == KvDtype::kBF16 ? sinkserve::kernels::DType::kBF16
                                      : sinkserve::kernels::DType::kF32);
  std::printf("loaded %s in %.1f s (CUDA graphs %s, prefill attention on %s)\n", model.c_str(),
              Seconds(load_start, Clock::now()), graphs ? "on" : "off",
              flash_path ? "tensor cores" : "CUDA cores");

  const int64_t q_dim = c.n_heads * c.head_dim, kv_dim = c.n_kv_heads * c.head_dim;
  const double params = c.n_layers * (2.0 * q_dim * c.dim + 2.0 * kv_dim * c.dim +
                                      3.0 * c.ffn_dim * c.dim) +
                        static_cast<double>(c.vocab_size) * c.dim;
  const double wbytes = params * (weights_type == KvDtype::kF32 ? 4 : 2);
  const double kv_elem = kv_type == KvDtype::kF32 ? 4 : 2;
  auto floor_ms = [&](double cells, double sessions) {
    const double kv_bytes = sessions * cells * c.n_layers * 2.0 * kv_dim * kv_elem;
    return (wbytes + kv_bytes) / (bandwidth * 1e9) * 1e3;
  };
  const int longest = std::max({4 * prefill, batch_cache,
                                *std::max_element(caches.begin(), caches.end())});
  std::vector<int32_t> ids(longest);  // (longest) token ids, positions = slots = order
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((7 + 31 * i) % c.vocab_size);
  std::vector<int32_t> order(ids.size());
  std::iota(order.begin(), order.end(), 0);

  // Fills `n` cells of `kv` in chunks of 512 (no logits).
  auto fill = [&](KvStorage* kv, int n) -> absl::Status {
    StepResult r;
    for (int b = 0; b < n; b += 512) {
      const int len = std::min(512, n - b);
      auto ctx = absl::MakeConstSpan(order).subspan(0, b);
      auto nw = absl::MakeConstSpan(order).subspan(b, len);
      absl::Status s = backend->Forward({{kv, ctx, ctx, absl::MakeConstSpan(ids).subspan(b, len),
                                          nw, nw, LogitsMode::kNone}},
                                        &r);
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  };

  std::printf("\n%-28s %10s %10s %8s\n", "decode, one session", "ms/token", "floor ms", "ratio");
  for (int n : caches) {
    auto kv = backend->NewKvStorage(n);
    CHECK_OK(kv.status());
    CHECK_OK(fill(kv->get(), n - 1));
    auto ctx = absl::MakeConstSpan(order).subspan(0, n - 1);
    const int32_t slot[1] = {n - 1};
    std::vector<double> t;
    StepResult r;
    for (int s = 0; s < steps + 3; ++s) {
      const int32_t token[1] = {ids[s % ids.size()]};
      const auto a = Clock::now();
      CHECK_OK(backend->Forward({{kv->get(), ctx, ctx, token, slot, slot}}, &r));
      if (s >= 3) t.push_back(Seconds(a, Clock::now()) * 1e3);
    }
    const double ms = Median(t), fl = floor_ms(n, 1);
    std::printf("streaming cache %-12d %10.3f %10.3f %8.2f\n", n, ms, fl, ms / fl);
    if (recompute) {
      std::vector<double> rt;
      auto fresh = backend->NewKvStorage(n);
      CHECK_OK(fresh.status());
      for (int s = 0; s < 3; ++s) {
        auto sl = absl::MakeConstSpan(order).subspan(0, n);
        const auto a = Clock::now();
        CHECK_OK(backend->Forward(
            {{fresh->get(), {}, {}, absl::MakeConstSpan(ids).subspan(0, n), sl, sl,
              LogitsMode::kLast}},
            &r));
        if (s >= 1) rt.push_back(Seconds(a, Clock::now()) * 1e3);
      }
      const double rms = Median(rt);
      std::printf("recompute window %-11d %10.3f %10s %8s  (%.0f TFLOP/s)\n", n, rms, "-", "-",
                  2.0 * params * n / (rms * 1e-3) / 1e12);
    }
  }

  std::printf("\n%-28s %10s %10s %10s %8s\n", "batched decode", "ms/step", "tokens/s",
              "floor ms", "ratio");
  for (int b : batches) {
    std::vector<std::unique_ptr<KvStorage>> kvs;
    for (int i = 0; i < b; ++i) {
      auto kv = backend->NewKvStorage(batch_cache);
      CHECK_OK(kv.status());
      CHECK_OK(fill(kv->get(), batch_cache - 1));
      kvs.push_back(std::move(*kv));
    }
    auto ctx = absl::MakeConstSpan(order).subspan(0, batch_cache - 1);
    const int32_t slot[1] = {batch_cache - 1};
    std::vector<int32_t> tokens(b);
    std::vector<SequenceStep> batch(b);
    std::vector<double> t;
    StepResult r;
    for (int s = 0; s < steps + 3; ++s) {
      for (int i = 0; i < b; ++i) {
        tokens[i] = ids[(s + i) % ids.size()];
        batch[i] = {kvs[i].get(), ctx, ctx, absl::MakeConstSpan(&tokens[i], 1), slot, slot};
      }
      const auto a = Clock::now();
      CHECK_OK(backend->Forward(batch, &r));
      if (s >= 3) t.push_back(Seconds(a, Clock::now()) * 1e3);
    }
    const double ms = Median(t), fl = floor_ms(batch_cache, b);
    std::printf("sessions %-19d %10.3f %10.0f %10.3f %8.2f\n", b, ms, b / (ms * 1e-3), fl,
                ms / fl);
  }

  std::printf("\n%-28s %10s %10s %10s\n", "prefill", "ms", "tokens/s", "TFLOP/s");
  for (int n : {prefill, 4 * prefill}) {
    std::vector<double> t;
    for (int s = 0; s < 4; ++s) {
      auto kv = backend->NewKvStorage(n);
      CHECK_OK(kv.status());
      auto sl = absl::MakeConstSpan(order).subspan(0, n);
      StepResult r;
      const auto a = Clock::now();
      CHECK_OK(backend->Forward({{kv->get(), {}, {}, absl::MakeConstSpan(ids).subspan(0, n), sl,
                                  sl, LogitsMode::kLast}}, &r));
      if (s >= 1) t.push_back(Seconds(a, Clock::now()) * 1e3);
    }
    const double ms = Median(t);
    // Matmul FLOPs only, plus causal attention (QK and PV, half the square).
    const double flops = 2.0 * params * n + 2.0 * c.n_layers * q_dim * static_cast<double>(n) * n;
    std::printf("chunk %-22d %10.2f %10.0f %10.1f  (GEMM rate %.0f)\n", n, ms, n / (ms * 1e-3),
                flops / (ms * 1e-3) / 1e12, gemm);
  }
  return 0;
}
