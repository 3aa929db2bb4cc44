#include "service/server/serving_model.h"

#include "engine/cpu/cpu_backend.h"
#include "engine/gguf/model_fingerprint.h"
#include "memory/status_macros.h"

namespace sinkserve::service {

absl::StatusOr<std::unique_ptr<ServingModel>> ServingModel::Load(
    const ServingModelOptions& options) {
  auto model = std::make_unique<ServingModel>();
  SINKSERVE_ASSIGN_OR_RETURN(model->weights, engine::ModelWeights::Load(options.path));
  model->fingerprint = engine::ModelFingerprint(model->weights->file());
  SINKSERVE_ASSIGN_OR_RETURN(model->tokenizer, engine::Tokenizer::FromGguf(model->weights->file()));
  if (options.make_backend) {
    SINKSERVE_ASSIGN_OR_RETURN(model->backend, options.make_backend(model->weights));
  } else {
    engine::CpuBackendOptions backend_options;
    backend_options.threads = options.threads;
    SINKSERVE_ASSIGN_OR_RETURN(model->backend,
                               engine::NewCpuBackend(model->weights, backend_options));
  }
  model->chat_info = ModelChatInfoFromVocab(model->tokenizer->vocab());
  return model;
}

}  // namespace sinkserve::service
