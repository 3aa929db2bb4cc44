// make_synthetic_model: writes a random llama / qwen2 GGUF model.
//
//   make_synthetic_model --out model.gguf [--preset llama-7b] [--arch llama]
//       [--dim N] [--layers N] [--heads N] [--kv-heads N] [--ffn N]
//       [--vocab N] [--ctx N] [--type f32|f16|bf16|q8_0|q4_0|q4_K|q6_K]
//       [--seed S] [--scale X] [--rope-base X] [--rope-scale X] [--rms-eps X]
//       [--tied] [--qkv-bias | --no-qkv-bias] [--tokenizer-from GGUF]
//       [--threads N] [--name NAME] [--quiet]
//
// Tensors are generated and written row batch by row batch, so a 7B-shaped
// model needs a few MB of memory, not the size of the model.
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "engine/gguf/gguf_writer.h"

namespace {

using sinkserve::engine::GgmlType;
using sinkserve::engine::SyntheticLlamaSpec;

struct Preset {
  const char* arch;
  int64_t dim, layers, heads, kv_heads, ffn, vocab, ctx;
  float rope_base;
  bool tied;
};

// Shapes of real models, for benchmarks that want realistic sizes.
const std::map<std::string, Preset>& Presets() {
  static const auto* presets = new std::map<std::string, Preset>{
      {"tiny", {"llama", 64, 2, 4, 2, 128, 512, 2048, 10000.f, false}},
      {"stories15m", {"llama", 288, 6, 6, 6, 768, 32000, 256, 10000.f, false}},
      {"tinyllama-1.1b",
       {"llama", 2048, 22, 32, 4, 5632, 32000, 2048, 10000.f, false}},
      {"llama-7b",
       {"llama", 4096, 32, 32, 32, 11008, 32000, 4096, 10000.f, false}},
      {"mistral-7b",
       {"llama", 4096, 32, 32, 8, 14336, 32000, 32768, 1000000.f, false}},
      {"llama3-8b",
       {"llama", 4096, 32, 32, 8, 14336, 128256, 8192, 500000.f, false}},
      {"qwen2-0.5b",
       {"qwen2", 896, 24, 14, 2, 4864, 151936, 32768, 1000000.f, true}},
      {"qwen2-1.5b",
       {"qwen2", 1536, 28, 12, 2, 8960, 151936, 32768, 1000000.f, true}},
  };
  return *presets;
}

bool ParseType(std::string s, GgmlType* out) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  static const std::map<std::string, GgmlType> kTypes = {
      {"f32", GgmlType::kF32},   {"f16", GgmlType::kF16},
      {"bf16", GgmlType::kBF16}, {"q8_0", GgmlType::kQ8_0},
      {"q4_0", GgmlType::kQ4_0}, {"q4_k", GgmlType::kQ4_K},
      {"q6_k", GgmlType::kQ6_K}};
  auto it = kTypes.find(s);
  if (it == kTypes.end()) return false;
  *out = it->second;
  return true;
}

[[noreturn]] void Usage(const char* message) {
  if (message != nullptr)
    std::fprintf(stderr, "make_synthetic_model: %s\n\n", message);
  std::fprintf(
      stderr,
      "usage: make_synthetic_model --out PATH [--preset NAME] [--arch "
      "llama|qwen2]\n"
      "  [--dim N] [--layers N] [--heads N] [--kv-heads N] [--ffn N] [--vocab "
      "N]\n"
      "  [--ctx N] [--type f32|f16|bf16|q8_0|q4_0|q4_K|q6_K] [--seed S]\n"
      "  [--scale X] [--rope-base X] [--rope-scale X] [--rms-eps X] [--tied]\n"
      "  [--qkv-bias|--no-qkv-bias] [--tokenizer-from GGUF] [--threads N]\n"
      "  [--name NAME] [--quiet]\npresets:");
  for (const auto& [name, p] : Presets())
    std::fprintf(stderr, " %s", name.c_str());
  std::fprintf(stderr, "\n");
  std::exit(message == nullptr ? 0 : 2);
}

int64_t ToInt(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  const long long n = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0')
    Usage((flag + " wants an integer, got '" + v + "'").c_str());
  return n;
}

float ToFloat(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  const float x = std::strtof(v.c_str(), &end);
  if (v.empty() || *end != '\0')
    Usage((flag + " wants a number, got '" + v + "'").c_str());
  return x;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  SyntheticLlamaSpec spec;
  std::string out;
  bool quiet = false;

  // A preset first, so that any other flag overrides it.
  for (size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] != "--preset") continue;
    auto it = Presets().find(args[i + 1]);
    if (it == Presets().end())
      Usage(("unknown preset '" + args[i + 1] + "'").c_str());
    const Preset& p = it->second;
    spec.arch = p.arch;
    spec.name = it->first;
    spec.dim = p.dim;
    spec.n_layers = p.layers;
    spec.n_heads = p.heads;
    spec.n_kv_heads = p.kv_heads;
    spec.ffn_dim = p.ffn;
    spec.vocab_size = p.vocab;
    spec.context_length = p.ctx;
    spec.rope_freq_base = p.rope_base;
    spec.tied_output = p.tied;
  }

  // Flags that take a value, and flags that do not.
  using S = const std::string&;
  const std::map<std::string, std::function<void(S, S)>> valued = {
      {"--out", [&](S, S v) { out = v; }},
      {"--preset", [](S, S) {}},
      {"--arch", [&](S, S v) { spec.arch = v; }},
      {"--name", [&](S, S v) { spec.name = v; }},
      {"--dim", [&](S f, S v) { spec.dim = ToInt(f, v); }},
      {"--layers", [&](S f, S v) { spec.n_layers = ToInt(f, v); }},
      {"--heads", [&](S f, S v) { spec.n_heads = ToInt(f, v); }},
      {"--kv-heads", [&](S f, S v) { spec.n_kv_heads = ToInt(f, v); }},
      {"--ffn", [&](S f, S v) { spec.ffn_dim = ToInt(f, v); }},
      {"--vocab", [&](S f, S v) { spec.vocab_size = ToInt(f, v); }},
      {"--ctx", [&](S f, S v) { spec.context_length = ToInt(f, v); }},
      {"--seed", [&](S f, S v) { spec.seed = ToInt(f, v); }},
      {"--threads",
       [&](S f, S v) { spec.threads = static_cast<int>(ToInt(f, v)); }},
      {"--scale", [&](S f, S v) { spec.weight_scale = ToFloat(f, v); }},
      {"--rope-base", [&](S f, S v) { spec.rope_freq_base = ToFloat(f, v); }},
      {"--rope-scale", [&](S f, S v) { spec.rope_scale = ToFloat(f, v); }},
      {"--rms-eps", [&](S f, S v) { spec.rms_eps = ToFloat(f, v); }},
      {"--tokenizer-from", [&](S, S v) { spec.tokenizer_from = v; }},
      {"--type",
       [&](S, S v) {
         if (!ParseType(v, &spec.weight_type)) {
           Usage(("unknown --type " + v).c_str());
         }
       }},
  };
  const std::map<std::string, std::function<void()>> boolean = {
      {"--help", [] { Usage(nullptr); }},
      {"--tied", [&] { spec.tied_output = true; }},
      {"--qkv-bias", [&] { spec.qkv_bias = true; }},
      {"--no-qkv-bias", [&] { spec.qkv_bias = false; }},
      {"--quiet", [&] { quiet = true; }},
  };
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& flag = args[i];
    if (auto it = boolean.find(flag); it != boolean.end()) {
      it->second();
    } else if (auto it = valued.find(flag); it != valued.end()) {
      if (i + 1 >= args.size()) Usage((flag + " needs a value").c_str());
      it->second(flag, args[++i]);
    } else {
      Usage(("unknown flag " + flag).c_str());
    }
  }
  if (out.empty()) Usage("--out is required");

  const auto start = std::chrono::steady_clock::now();
  auto last = start - std::chrono::seconds(10);
  if (!quiet) {
    spec.progress = [&](size_t done, size_t total, uint64_t bytes) {
      const auto now = std::chrono::steady_clock::now();
      if (done != total && now - last < std::chrono::seconds(1)) return;
      last = now;
      const double secs = std::chrono::duration<double>(now - start).count();
      std::fprintf(stderr, "\r[%zu/%zu tensors] %.1f MB in %.1f s", done, total,
                   bytes / 1e6, secs);
      if (done == total) std::fprintf(stderr, "\n");
    };
  }
  const absl::Status status = sinkserve::engine::WriteSyntheticLlama(spec, out);
  if (!status.ok()) {
    std::fprintf(stderr, "make_synthetic_model: %s\n",
                 std::string(status.message()).c_str());
    return 1;
  }
  if (!quiet) std::printf("wrote %s\n", out.c_str());
  return 0;
}
