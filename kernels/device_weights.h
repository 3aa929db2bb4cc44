// A model's weights copied to the device: matrices converted to one compute
// type (f32 / f16 / bf16) from whatever GGUF type the file holds, norms and
// biases in f32.
#ifndef SINKSERVE_KERNELS_DEVICE_WEIGHTS_H_
#define SINKSERVE_KERNELS_DEVICE_WEIGHTS_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/gguf/model_weights.h"
#include "kernels/device_buffer.h"
#include "kernels/device_context.h"
#include "kernels/ops.h"

namespace sinkserve::kernels {

struct DeviceMatrix {
  const void* data = nullptr;  // (rows, cols) row-major in DeviceWeights::dtype()
  int64_t rows = 0;
  int64_t cols = 0;
};

struct DeviceLayer {
  const float* attn_norm = nullptr;  // (dim)
  DeviceMatrix wq, wk, wv, wo;
  const float* bq = nullptr;         // (q_dim) or null
  const float* bk = nullptr;         // (kv_dim) or null
  const float* bv = nullptr;         // (kv_dim) or null
  const float* ffn_norm = nullptr;   // (dim)
  DeviceMatrix w_gate, w_up, w_down;
};

class DeviceWeights {
 public:
  // UNIMPLEMENTED for a matrix type the device cannot convert; errors of
  // allocation and copy as Status.
  static absl::StatusOr<std::unique_ptr<DeviceWeights>> Upload(
      const engine::ModelWeights& weights, DType dtype, const DeviceContext& ctx);

  DType dtype() const { return dtype_; }
  const DeviceMatrix& token_embd() const { return token_embd_; }  // (vocab, dim)
  const float* output_norm() const { return output_norm_; }        // (dim)
  const DeviceMatrix& output() const { return output_; }          // (vocab, dim)
  const std::vector<DeviceLayer>& layers() const { return layers_; }
  int64_t bytes() const { return bytes_; }

 private:
  explicit DeviceWeights(DType dtype) : dtype_(dtype) {}
  absl::StatusOr<DeviceMatrix> Matrix(const engine::WeightMatrix& w, const DeviceContext& ctx);
  absl::StatusOr<const float*> Vector(const float* host, int64_t n, const DeviceContext& ctx);

  DType dtype_;
  DeviceMatrix token_embd_;
  const float* output_norm_ = nullptr;
  DeviceMatrix output_;
  std::vector<DeviceLayer> layers_;
  int64_t bytes_ = 0;
  std::vector<DeviceBuffer> buffers_;  // owns every pointer above
  DeviceBuffer staging_;               // raw GGUF bytes of one matrix
};

}  // namespace sinkserve::kernels

#endif  // SINKSERVE_KERNELS_DEVICE_WEIGHTS_H_
