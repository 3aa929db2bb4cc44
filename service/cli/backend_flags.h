// --backend auto|cpu|cuda, shared by the subcommands that decode (generate,
// perplexity, bench, serve). The CPU backend is the default until the CUDA
// backend has passed its parity suite on a GPU (kernels/NOTES.md).
#ifndef SINKSERVE_SERVICE_CLI_BACKEND_FLAGS_H_
#define SINKSERVE_SERVICE_CLI_BACKEND_FLAGS_H_

#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/gguf/model_weights.h"
#include "service/cli/flags.h"

namespace sinkserve::cli {

// Appends --backend to `specs`.
void AddBackendFlags(std::vector<FlagSpec>* specs);

// After parsing: -1 when --backend names a backend, else prints why and
// returns the usage exit code (the ParseOrExit idiom).
int CheckBackendFlag(const FlagSet& flags, std::string_view command);

// The backend --backend names, with `threads` CPU threads (0 = one per core)
// and KV rows of `kv_dtype`. INVALID_ARGUMENT for an unknown name,
// FAILED_PRECONDITION for cuda in a build without it, UNAVAILABLE for cuda
// without a usable GPU; auto falls back to the CPU.
absl::StatusOr<std::unique_ptr<engine::Backend>> BackendFromFlags(
    const FlagSet& flags, std::shared_ptr<const engine::ModelWeights> weights, int threads,
    engine::KvDtype kv_dtype);

}  // namespace sinkserve::cli

#endif  // SINKSERVE_SERVICE_CLI_BACKEND_FLAGS_H_
