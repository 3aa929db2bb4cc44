// Options of the CUDA backend, apart from kernels/cuda_backend.h so that code
// built without the CUDA headers (the backend registry) can fill them.
#ifndef SINKSERVE_KERNELS_CUDA_BACKEND_OPTIONS_H_
#define SINKSERVE_KERNELS_CUDA_BACKEND_OPTIONS_H_

#include "engine/backend.h"

namespace sinkserve::kernels {

struct CudaBackendOptions {
  // CUDA device ordinal.
  // Default: 0.
  int device = 0;
  // Type weight matrices are stored and multiplied in on the device; any
  // supported GGUF type is converted at load. f32 is for exactness tests.
  // Default: kF16.
  engine::KvDtype weight_dtype = engine::KvDtype::kF16;
  // Type of the KV rows of storages this backend makes.
  // Default: kF16.
  engine::KvDtype kv_dtype = engine::KvDtype::kF16;
  // Capture steady decode steps (the same batch shape twice in a row) as CUDA
  // graphs and replay them (kernels/decode_graphs.h).
  // Default: false until verified on a GPU.
  bool cuda_graphs = false;
  // Prefill attention on tensor cores (flash_prefill_attention.cu) where it
  // supports the model and KV type (f16 / bf16 KV, head_dim 16/32/64/128);
  // false keeps the CUDA-core kernel. The GPU tests and cuda_bench turn it
  // on; servers keep the verified kernel until the parity suite has passed
  // with it on a GPU (kernels/NOTES.md).
  // Default: false.
  bool flash_prefill = false;
};

}  // namespace sinkserve::kernels

#endif  // SINKSERVE_KERNELS_CUDA_BACKEND_OPTIONS_H_
