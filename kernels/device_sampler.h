// Token picking on the GPU (kernels/sampling.cu): log-softmax, the surprisal
// of a given token (SirLLM's score) and a greedy / top-k / top-p /
// temperature draw, for rows of logits.
//
// Today the rows come from the host; the kernel is written so the backend can
// run it on its own logits buffer and return token ids instead of logits
// (TODO: a Backend extension for that, used by the generator).
#ifndef SINKSERVE_KERNELS_DEVICE_SAMPLER_H_
#define SINKSERVE_KERNELS_DEVICE_SAMPLER_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/device_buffer.h"
#include "kernels/device_context.h"
#include "kernels/ops.h"

namespace sinkserve::kernels {

class DeviceSampler {
 public:
  // UNAVAILABLE without a usable device.
  static absl::StatusOr<std::unique_ptr<DeviceSampler>> Create(int device);

  // logits: (params.size(), vocab). One result per row.
  absl::StatusOr<std::vector<SampleResult>> Sample(absl::Span<const float> logits, int vocab,
                                                   absl::Span<const SampleParams> params);

 private:
  explicit DeviceSampler(std::shared_ptr<DeviceContext> ctx) : ctx_(std::move(ctx)) {}

  std::shared_ptr<DeviceContext> ctx_;
  DeviceBuffer logits_;   // (rows, vocab) f32
  DeviceBuffer params_;   // (rows) SampleParams
  DeviceBuffer results_;  // (rows) SampleResult
};

}  // namespace sinkserve::kernels

#endif  // SINKSERVE_KERNELS_DEVICE_SAMPLER_H_
