#include "service/cli/backend_flags.h"

#include <iostream>
#include <string>
#include <utility>


#include "kernels/backend_registry.h"

namespace sinkserve::cli {

void AddBackendFlags(std::vector<FlagSpec>* specs) {
  specs->push_back({"backend", FlagKind::kString, "cpu",
                    "compute backend: cpu, cuda, or auto (CUDA when this build has it and a "
                    "GPU is usable, else CPU)"});
}

int CheckBackendFlag(const FlagSet& flags, std::string_view command) {
  const std::string name = flags.GetString("backend");
  if (name == "cpu" || name == "cuda" || name == "auto") return -1;
  std::cerr << "sinkserve " << command << ": --backend " << name
            << ": expected cpu, cuda or auto\n";
  return kExitUsage;
}

absl::StatusOr<std::unique_ptr<engine::Backend>> BackendFromFlags(
    const FlagSet& flags, std::shared_ptr<const engine::ModelWeights> weights, int threads,
    engine::KvDtype kv_dtype) {
  kernels::BackendOptions options;
  options.cpu_threads = threads;
  options.kv_dtype = kv_dtype;
  return kernels::MakeBackend(flags.GetString("backend"), std::move(weights), options);
}

}  // namespace sinkserve::cli
