// `sinkserve bench`: prefill and decode speed of the CPU backend, and how
// close decode comes to the machine's memory bandwidth.
#include <algorithm>
#include <chrono>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "engine/generator.h"
#include "engine/cpu/membw.h"
#include "engine/gguf/model_weights.h"
#include "engine/cpu/thread_pool.h"
#include "service/cli/backend_flags.h"
#include "service/cli/commands.h"

namespace sinkserve::cli {
namespace {

constexpr char kSynopsis[] =
    "--model PATH [--threads N] [--prompt-tokens N] [--gen-tokens N] [--runs N]\n"
    "    [--kv-dtype f32|f16|bf16]\n"
    "Times a prefill of --prompt-tokens tokens and a decode of --gen-tokens tokens\n"
    "(from an empty cache, greedy) --runs times and prints the medians, the weight\n"
    "bandwidth decode achieves (weight bytes per token x tokens/s) next to the\n"
    "measured memory read bandwidth, and the model load (mmap) time.";

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int32_t Argmax(absl::Span<const float> logits) {
  return std::max_element(logits.begin(), logits.end()) - logits.begin();
}

// One sequence on the in-order cache, fed through the backend.
class BenchSequence {
 public:
  BenchSequence(engine::Backend* backend, std::unique_ptr<engine::KvStorage> kv)
      : backend_(backend), kv_(std::move(kv)), cache_(kv_->capacity()) {}

  void Clear() { cache_.Clear(); }

  absl::Status Feed(absl::Span<const int32_t> tokens, engine::LogitsMode mode) {
    engine::SequenceStep step;
    step.kv = kv_.get();
    step.tokens = tokens;
    step.logits = mode;
    cache_.Plan(tokens.size(), &step);
    if (absl::Status s = backend_->Forward({step}, &result_); !s.ok()) return s;
    cache_.Commit(tokens.size());
    return absl::OkStatus();
  }

  absl::Span<const float> logits() const { return result_.logits[0]; }

 private:
  engine::Backend* backend_;
  std::unique_ptr<engine::KvStorage> kv_;
  engine::InOrderCache cache_;
  engine::StepResult result_;
};

}  // namespace

int RunBench(const std::vector<std::string>& args) {
  std::vector<FlagSpec> specs = {
      {"model", FlagKind::kString, "", "GGUF model file"},
      {"threads", FlagKind::kInt, "0", "CPU threads; 0 = one per core"},
      {"prompt-tokens", FlagKind::kInt, "512", "tokens per prefill run"},
      {"gen-tokens", FlagKind::kInt, "128", "tokens per decode run"},
      {"runs", FlagKind::kInt, "3", "repetitions; medians are reported"},
      {"kv-dtype", FlagKind::kString, "f32", "KV cache element type: f32, f16, bf16"}};
  AddBackendFlags(&specs);
  FlagSet flags("bench", kSynopsis, std::move(specs));
  if (int rc = ParseOrExit(flags, args); rc >= 0) return rc;
  if (int rc = CheckBackendFlag(flags, "bench"); rc >= 0) return rc;
  if (!flags.Has("model")) {
    std::cerr << "sinkserve bench: --model is required\n";
    return kExitUsage;
  }
  const int64_t prompt_tokens = flags.GetInt("prompt-tokens");
  const int64_t gen_tokens = flags.GetInt("gen-tokens");
  const int64_t runs = flags.GetInt("runs");
  int64_t threads = flags.GetInt("threads");
  if (prompt_tokens < 1 || gen_tokens < 1 || runs < 1 || threads < 0) {
    std::cerr << "sinkserve bench: --prompt-tokens, --gen-tokens, --runs must be >= 1\n";
    return kExitUsage;
  }
  if (threads == 0) threads = engine::ThreadPool::DefaultThreads();
  auto kv_dtype = engine::ParseKvDtype(flags.GetString("kv-dtype"));
  if (!kv_dtype.ok()) {
    std::cerr << "sinkserve bench: " << kv_dtype.status().message() << "\n";
    return kExitUsage;
  }

  const auto load_start = Clock::now();
  auto weights = engine::ModelWeights::Load(flags.GetString("model"));
  if (!weights.ok()) return Fail("bench", weights.status());
  const double load_seconds = Seconds(load_start);
  const engine::ModelConfig& config = (*weights)->config();

  auto backend = BackendFromFlags(flags, *weights, static_cast<int>(threads), *kv_dtype);
  if (!backend.ok()) return Fail("bench", backend.status());
  const int64_t capacity = std::max(prompt_tokens, gen_tokens + 1);
  auto kv = (*backend)->NewKvStorage(capacity);
  if (!kv.ok()) return Fail("bench", kv.status());
  BenchSequence sequence(backend->get(), std::move(*kv));

  // Deterministic, spread-out token ids: content does not change the cost.
  std::vector<int32_t> prompt(prompt_tokens);
  for (int64_t i = 0; i < prompt_tokens; ++i) {
    prompt[i] = static_cast<int32_t>((i * 7919 + 13) % config.vocab_size);
  }

  std::vector<double> prefill_rates, decode_rates;
  // One untimed warm-up run faults the mapping in and sizes every buffer.
  for (int64_t run = -1; run < runs; ++run) {
    std::cerr << (run < 0 ? absl::StrFormat("warm-up ...")
                          : absl::StrFormat("run %d/%d ...", run + 1, runs))
              << std::flush;
    sequence.Clear();
    auto start = Clock::now();
    if (absl::Status s = sequence.Feed(prompt, engine::LogitsMode::kLast); !s.ok()) {
      return Fail("bench", s);
    }
    const double prefill = Seconds(start);

    sequence.Clear();
    int32_t token = static_cast<int32_t>(13 % config.vocab_size);
    start = Clock::now();
    for (int64_t i = 0; i < gen_tokens; ++i) {
      const int32_t fed[1] = {token};
      if (absl::Status s = sequence.Feed(fed, engine::LogitsMode::kLast); !s.ok()) {
        return Fail("bench", s);
      }
      token = Argmax(sequence.logits());
    }
    const double decode = Seconds(start);
    std::cerr << absl::StrFormat(" prefill %.1f tok/s, decode %.1f tok/s\n",
                                 prompt_tokens / prefill, gen_tokens / decode);
    if (run >= 0) {
      prefill_rates.push_back(prompt_tokens / prefill);
      decode_rates.push_back(gen_tokens / decode);
    }
  }

  std::cerr << "measuring memory read bandwidth ..." << std::flush;
  double membw_gbps = 0;
  {
    engine::ThreadPool pool(static_cast<int>(threads));
    membw_gbps = engine::MeasureReadBandwidth(static_cast<int>(threads), &pool);
  }
  std::cerr << absl::StrFormat(" %.2f GB/s\n", membw_gbps);

  const double prefill_rate = Median(prefill_rates);
  const double decode_rate = Median(decode_rates);
  const double bytes_per_token = (*weights)->DecodeBytesPerToken();
  const double weight_gbps = bytes_per_token * decode_rate / 1e9;
  absl::PrintF("model       %s (%s, dim %d, %d layers, vocab %d)\n", flags.GetString("model"),
               config.architecture, config.dim, config.n_layers, config.vocab_size);
  absl::PrintF("load        %.2f ms (mmap + header parse)\n", load_seconds * 1e3);
  absl::PrintF("threads     %d\n", threads);
  absl::PrintF("kv cache    %s\n", std::string(engine::KvDtypeName(*kv_dtype)));
  absl::PrintF("prefill     %d tokens: %.1f tok/s (median of %d)\n", prompt_tokens,
               prefill_rate, runs);
  absl::PrintF("decode      %d tokens: %.1f tok/s, %.3f ms/token (median of %d)\n", gen_tokens,
               decode_rate, 1e3 / decode_rate, runs);
  absl::PrintF("ratio       prefill / decode = %.1fx\n", prefill_rate / decode_rate);
  absl::PrintF("weights     %.2f MB read per decoded token -> %.2f GB/s effective\n",
               bytes_per_token / 1e6, weight_gbps);
  absl::PrintF("membw       %.2f GB/s measured read bandwidth (%d threads); decode reaches "
               "%.0f%%\n",
               membw_gbps, threads, membw_gbps > 0 ? 100 * weight_gbps / membw_gbps : 0.0);
  return kExitOk;
}

}  // namespace sinkserve::cli
