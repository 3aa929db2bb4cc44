#include "kernels/backend_registry.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/cpu/cpu_backend.h"

#ifdef SINKSERVE_HAVE_CUDA
#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/cuda_module.h"
#endif

namespace sinkserve::kernels {
namespace {

absl::StatusOr<std::unique_ptr<engine::Backend>> MakeCpu(
    std::shared_ptr<const engine::ModelWeights> weights, const BackendOptions& options) {
  engine::CpuBackendOptions cpu;
  cpu.threads = options.cpu_threads;
  if (options.kv_dtype.has_value()) cpu.kv_dtype = *options.kv_dtype;
  return engine::NewCpuBackend(std::move(weights), cpu);
}

#ifdef SINKSERVE_HAVE_CUDA
std::string ExecutableDir() {
  char path[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
  if (n <= 0) return "";
  const std::string exe(path, static_cast<size_t>(n));
  return exe.substr(0, exe.rfind('/'));
}

// The module's entry, loaded once: $SINKSERVE_CUDA_MODULE, else beside the
// executable, else where this build tree put it. UNAVAILABLE (with every
// place tried and why) when none loads, e.g. on a machine without the CUDA
// libraries.
const absl::StatusOr<CudaModuleEntry>& LoadCudaModule() {
  static const absl::StatusOr<CudaModuleEntry>* loaded = [] {
    std::vector<std::string> paths;
    if (const char* env = std::getenv("SINKSERVE_CUDA_MODULE"); env != nullptr && *env) {
      paths.push_back(env);
    } else {
      paths.push_back(absl::StrCat(ExecutableDir(), "/", kCudaModuleFile));
#ifdef SINKSERVE_CUDA_MODULE_BUILD_PATH
      paths.push_back(SINKSERVE_CUDA_MODULE_BUILD_PATH);
#endif
    }
    std::string tried;
    for (const std::string& path : paths) {
      void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (handle == nullptr) {
        absl::StrAppend(&tried, tried.empty() ? "" : "; ", dlerror());
        continue;
      }
      // Never closed: backends made by it may live until exit.
      if (void* entry = dlsym(handle, kCudaModuleEntry)) {
        return new absl::StatusOr<CudaModuleEntry>(reinterpret_cast<CudaModuleEntry>(entry));
      }
      absl::StrAppend(&tried, tried.empty() ? "" : "; ", path, ": no ", kCudaModuleEntry);
    }
    return new absl::StatusOr<CudaModuleEntry>(absl::UnavailableError(
        absl::StrCat("cannot load the CUDA backend module (", tried, ")")));
  }();
  return *loaded;
}
#endif

absl::StatusOr<std::unique_ptr<engine::Backend>> MakeCuda(
    std::shared_ptr<const engine::ModelWeights> weights, const BackendOptions& options) {
#ifdef SINKSERVE_HAVE_CUDA
  const absl::StatusOr<CudaModuleEntry>& entry = LoadCudaModule();
  if (!entry.ok()) return entry.status();
  CudaBackendOptions cuda;
  cuda.device = options.cuda_device;
  cuda.weight_dtype = options.cuda_weight_dtype;
  if (options.kv_dtype.has_value()) cuda.kv_dtype = *options.kv_dtype;
  absl::StatusOr<std::unique_ptr<engine::Backend>> backend =
      absl::InternalError("the CUDA backend module returned nothing");
  (*entry)(&weights, &cuda, &backend);
  return backend;
#else
  return absl::FailedPreconditionError(
      "this build has no CUDA backend (configure with -DSINKSERVE_CUDA=ON where nvcc "
      "exists); use --backend cpu or auto");
#endif
}

}  // namespace

bool CudaCompiledIn() {
#ifdef SINKSERVE_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

absl::StatusOr<std::unique_ptr<engine::Backend>> MakeBackend(
    std::string_view name, std::shared_ptr<const engine::ModelWeights> weights,
    const BackendOptions& options) {
  if (weights == nullptr) return absl::InvalidArgumentError("null model weights");
  if (name == "cpu") return MakeCpu(std::move(weights), options);
  if (name == "cuda") return MakeCuda(std::move(weights), options);
  if (name == "auto") {
    if (!CudaCompiledIn()) return MakeCpu(std::move(weights), options);
    auto cuda = MakeCuda(weights, options);
    // No usable GPU, or a model the CUDA backend cannot run (head size,
    // weight type): the CPU serves it. Anything else (out of device memory,
    // a driver fault) is an error the caller should see.
    if (cuda.ok() ||
        !(absl::IsUnavailable(cuda.status()) || absl::IsUnimplemented(cuda.status()))) {
      return cuda;
    }
    return MakeCpu(std::move(weights), options);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown backend \"", absl::string_view(name.data(), name.size()),
      "\"; expected auto, cpu or cuda"));
}

}  // namespace sinkserve::kernels
