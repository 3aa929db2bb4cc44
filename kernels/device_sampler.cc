#include "kernels/device_sampler.h"

#include "absl/strings/str_cat.h"
#include "kernels/cuda_check.h"
#include "memory/status_macros.h"

namespace sinkserve::kernels {

absl::StatusOr<std::unique_ptr<DeviceSampler>> DeviceSampler::Create(int device) {
  SINKSERVE_ASSIGN_OR_RETURN(std::shared_ptr<DeviceContext> ctx, DeviceContext::Create(device));
  return std::unique_ptr<DeviceSampler>(new DeviceSampler(std::move(ctx)));
}

absl::StatusOr<std::vector<SampleResult>> DeviceSampler::Sample(
    absl::Span<const float> logits, int vocab, absl::Span<const SampleParams> params) {
  const size_t rows = params.size();
  if (vocab <= 0 || logits.size() != rows * vocab) {
    return absl::InvalidArgumentError(absl::StrCat(logits.size(), " logits for ", rows,
                                                   " rows of vocab ", vocab));
  }
  for (const SampleParams& p : params) {
    if (!(p.uniform >= 0.f && p.uniform < 1.f)) {
      return absl::InvalidArgumentError(absl::StrCat("uniform draw ", p.uniform,
                                                     " outside [0, 1)"));
    }
  }
  std::vector<SampleResult> results(rows);
  if (rows == 0) return results;
  SINKSERVE_RETURN_IF_ERROR(ctx_->Activate());
  SINKSERVE_RETURN_IF_ERROR(logits_.Reserve(logits.size() * sizeof(float)));
  SINKSERVE_RETURN_IF_ERROR(params_.Reserve(rows * sizeof(SampleParams)));
  SINKSERVE_RETURN_IF_ERROR(results_.Reserve(rows * sizeof(SampleResult)));
  const cudaStream_t stream = ctx_->stream();
  SINKSERVE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(logits_.get(), logits.data(),
                                                 logits.size() * sizeof(float),
                                                 cudaMemcpyHostToDevice, stream));
  SINKSERVE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(params_.get(), params.data(),
                                                 rows * sizeof(SampleParams),
                                                 cudaMemcpyHostToDevice, stream));
  SINKSERVE_CUDA_RETURN_IF_ERROR(LaunchSample(logits_.as<float>(), nullptr, static_cast<int>(rows),
                                              vocab, params_.as<SampleParams>(),
                                              results_.as<SampleResult>(), stream));
  SINKSERVE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(results.data(), results_.get(),
                                                 rows * sizeof(SampleResult),
                                                 cudaMemcpyDeviceToHost, stream));
  SINKSERVE_RETURN_IF_ERROR(ctx_->Synchronize());
  return results;
}

}  // namespace sinkserve::kernels
