// The model a server serves: weights, tokenizer, backend, chat formatting
// facts and the fingerprint that ties stored sessions to these weights.
#ifndef SINKSERVE_SERVICE_SERVER_SERVING_MODEL_H_
#define SINKSERVE_SERVICE_SERVER_SERVING_MODEL_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/gguf/model_weights.h"
#include "engine/tokenizer/tokenizer.h"
#include "service/chat_template.h"

namespace sinkserve::service {

struct ServingModelOptions {
  // GGUF file. Default: "" (required).
  std::string path;
  // CPU threads of the default backend; 0 = one per core. Default: 0.
  int threads = 0;
  // Makes the backend for the loaded weights (the command line's --backend
  // goes through kernels/backend_registry.h). Default: unset, the CPU backend
  // with `threads` and F32 K/V.
  std::function<absl::StatusOr<std::unique_ptr<engine::Backend>>(
      std::shared_ptr<const engine::ModelWeights>)>
      make_backend;
};

struct ServingModel {
  static absl::StatusOr<std::unique_ptr<ServingModel>> Load(const ServingModelOptions& options);

  std::shared_ptr<const engine::ModelWeights> weights;
  std::unique_ptr<engine::Tokenizer> tokenizer;
  // Owned by the scheduler thread once serving starts.
  std::unique_ptr<engine::Backend> backend;
  // engine::ModelFingerprint: sessions are stored under it, so a server
  // started on other weights refuses them (FAILED_PRECONDITION).
  std::string fingerprint;
  ModelChatInfo chat_info;
};

}  // namespace sinkserve::service

#endif  // SINKSERVE_SERVICE_SERVER_SERVING_MODEL_H_
