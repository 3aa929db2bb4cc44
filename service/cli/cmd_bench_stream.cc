// `sinkserve bench stream`: per-token decode latency of a bounded KV cache
// (StreamingLLM vs the recompute baseline) against cache size, and a long-run
// mode that shows latency and memory stay flat over millions of tokens.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <ctime>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/gguf/model_weights.h"
#include "engine/sampler.h"
#include "engine/sequence.h"
#include "engine/tokenizer/tokenizer.h"
#include "memory/status_macros.h"
#include "service/cli/backend_flags.h"
#include "service/cli/commands.h"

namespace sinkserve::cli {
namespace {

constexpr char kSynopsis[] =
    "--model PATH [--policy streaming|recompute|both] [--cache 256,512,...] [--tokens N]\n"
    "         [--recompute-tokens N] [--sinks S] [--threads N]\n"
    "         [--report-at 10000,100000,1000000 [--window N]]\n"
    "Per-token decode latency with a full cache of each size C: streaming(S, C-S)\n"
    "against recompute(C), which re-encodes its C cells for every token. The cache is\n"
    "filled first, then N tokens are sampled and fed back one at a time; prints the\n"
    "median and p90 per token and, with both policies, recompute / streaming.\n"
    "--report-at runs one policy at the first --cache size for as many generated\n"
    "tokens as the largest mark and prints, at each mark, the median latency over the\n"
    "last --window tokens and the process RSS.";

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

memory::PolicyConfig PolicyFor(const std::string& kind, int cache, int sinks) {
  memory::PolicyConfig policy;
  if (kind == "streaming") {
    policy.kind = memory::PolicyKind::kStreaming;
    policy.sinks = sinks;
    policy.window = cache - sinks;
  } else {
    policy.kind = memory::PolicyKind::kRecompute;
    policy.window = cache;
  }
  return policy;
}

// Quantile q in [0, 1] of `v` (sorted in place), nearest rank.
double Quantile(std::vector<double>& v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(q * (v.size() - 1) + 0.5));
  return v[i];
}

// CPU time of the calling thread, in ms: unlike wall time it does not count
// the time the thread waits for a core, so it stays comparable on a loaded
// machine (the backend computes on the calling thread when --threads 1).
double ThreadCpuMs() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

// Resident set size of this process in KiB (VmRSS), 0 if unknown.
int64_t RssKib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      int64_t kib = 0;
      std::string digits;
      for (char c : line) {
        if (c >= '0' && c <= '9') digits += c;
      }
      return absl::SimpleAtoi(digits, &kib) ? kib : 0;
    }
  }
  return 0;
}

// Decodes with a sampler, feeding each sampled token back: the generation
// loop without the text side. Keeps nothing per token.
class Decoder {
 public:
  static absl::StatusOr<std::unique_ptr<Decoder>> Create(engine::Backend* backend,
                                                         const memory::PolicyConfig& policy) {
    engine::SequenceOptions options;
    options.policy = policy;
    options.max_step_tokens = 512;
    SINKSERVE_ASSIGN_OR_RETURN(std::unique_ptr<engine::Sequence> seq,
                               engine::Sequence::Create(backend, options));
    return std::unique_ptr<Decoder>(new Decoder(std::move(seq)));
  }

  // Fills the cache with `n` pseudo-random tokens (the content does not
  // change the cost), then takes one logits row.
  absl::Status Fill(int n, int vocab) {
    std::vector<int32_t> ids(n);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int32_t& id : ids) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      id = 3 + static_cast<int32_t>(x % static_cast<uint64_t>(vocab - 3));
    }
    return seq_->Feed(ids, engine::LogitsMode::kLast);
  }

  absl::Status FeedFirst(int32_t token) {
    return seq_->Feed(absl::MakeConstSpan(&token, 1), engine::LogitsMode::kLast);
  }

  // Samples the next token from the last logits and feeds it.
  absl::Status Step() {
    const int32_t token = sampler_.Sample(seq_->last_logits());
    sampler_.Accept(token);
    return seq_->Feed(absl::MakeConstSpan(&token, 1), engine::LogitsMode::kLast);
  }

  const engine::Sequence& seq() const { return *seq_; }

 private:
  static engine::SamplerOptions Sampling() {
    engine::SamplerOptions s;
    s.temperature = 1.0f;
    s.top_k = 0;
    s.top_p = 1.0f;
    s.min_p = 0.0f;
    s.seed = 1;
    return s;
  }
  explicit Decoder(std::unique_ptr<engine::Sequence> seq)
      : seq_(std::move(seq)), sampler_(Sampling()) {}

  std::unique_ptr<engine::Sequence> seq_;
  engine::Sampler sampler_;
};

struct Latency {
  double median_ms = 0;
  double p90_ms = 0;
};

absl::StatusOr<Latency> TimeDecode(engine::Backend* backend, const memory::PolicyConfig& policy,
                                   int cache, int tokens) {
  SINKSERVE_ASSIGN_OR_RETURN(std::unique_ptr<Decoder> decoder, Decoder::Create(backend, policy));
  SINKSERVE_RETURN_IF_ERROR(decoder->Fill(cache, backend->config().vocab_size));
  for (int i = 0; i < 2; ++i) SINKSERVE_RETURN_IF_ERROR(decoder->Step());  // warm-up
  std::vector<double> ms;
  ms.reserve(tokens);
  for (int i = 0; i < tokens; ++i) {
    const Clock::time_point t0 = Clock::now();
    SINKSERVE_RETURN_IF_ERROR(decoder->Step());
    ms.push_back(Seconds(t0) * 1e3);
  }
  Latency out;
  out.p90_ms = Quantile(ms, 0.9);
  out.median_ms = Quantile(ms, 0.5);
  return out;
}

int Sweep(engine::Backend* backend, const std::vector<std::string>& kinds,
          const std::vector<int64_t>& caches, int sinks, int tokens, int recompute_tokens) {
  std::cout << absl::StrFormat("%-6s %-22s %10s %10s %10s", "cache", "policy", "median_ms",
                               "p90_ms", "tok/s");
  if (kinds.size() == 2) std::cout << absl::StrFormat(" %10s", "ratio");
  std::cout << "\n";
  for (int64_t cache : caches) {
    double streaming_ms = 0;
    for (const std::string& kind : kinds) {
      const memory::PolicyConfig policy = PolicyFor(kind, cache, sinks);
      const int n = kind == "recompute" ? recompute_tokens : tokens;
      std::cerr << "bench stream: " << policy.ToString() << ", " << n << " tokens\n";
      auto latency = TimeDecode(backend, policy, cache, n);
      if (!latency.ok()) return Fail("bench stream", latency.status());
      std::cout << absl::StrFormat("%-6d %-22s %10.4f %10.4f %10.1f", cache, policy.ToString(),
                                   latency->median_ms, latency->p90_ms,
                                   1e3 / latency->median_ms);
      if (kind == "streaming") streaming_ms = latency->median_ms;
      if (kinds.size() == 2 && kind == "recompute") {
        std::cout << absl::StrFormat(" %9.1fx", latency->median_ms / streaming_ms);
      }
      std::cout << std::endl;
    }
  }
  return kExitOk;
}

int LongRun(engine::Backend* backend, const memory::PolicyConfig& policy, int32_t bos,
            std::vector<int64_t> marks, int window) {
  std::sort(marks.begin(), marks.end());
  marks.erase(std::unique(marks.begin(), marks.end()), marks.end());
  auto decoder = Decoder::Create(backend, policy);
  if (!decoder.ok()) return Fail("bench stream", decoder.status());
  // The generation starts from BOS like `generate`.
  if (absl::Status s = (*decoder)->FeedFirst(bos); !s.ok()) return Fail("bench stream", s);
  std::cout << absl::StrFormat("policy %s, latency over the last %d tokens at each mark\n",
                               policy.ToString(), window);
  std::cout << absl::StrFormat("%-10s %10s %10s %10s %10s %8s %12s\n", "tokens", "median_ms",
                               "p90_ms", "cpu_ms", "rss_kib", "cells", "evicted");
  std::vector<double> ring(window);      // per-token wall ms of the last `window` tokens
  std::vector<double> cpu_ring(window);  // per-token thread CPU ms, likewise
  std::vector<double> scratch;
  scratch.reserve(window);
  const Clock::time_point start = Clock::now();
  Clock::time_point last_report = start;
  size_t next_mark = 0;
  double first_median = 0;
  int64_t first_rss = 0;
  double first_cpu = 0;
  double worst_latency = 0, worst_cpu = 0, worst_rss = 0;
  for (int64_t t = 1; next_mark < marks.size(); ++t) {
    const Clock::time_point t0 = Clock::now();
    const double cpu0 = ThreadCpuMs();
    if (absl::Status s = (*decoder)->Step(); !s.ok()) return Fail("bench stream", s);
    cpu_ring[(t - 1) % window] = ThreadCpuMs() - cpu0;
    const Clock::time_point t1 = Clock::now();
    ring[(t - 1) % window] = std::chrono::duration<double>(t1 - t0).count() * 1e3;
    if (std::chrono::duration<double>(t1 - last_report).count() > 5.0) {
      last_report = t1;
      std::cerr << absl::StrFormat("bench stream: %d tokens, %.0f tok/s\n", t,
                                   t / Seconds(start));
    }
    if (t != marks[next_mark]) continue;
    ++next_mark;
    const int64_t n = std::min<int64_t>(t, window);
    scratch.assign(ring.begin(), ring.begin() + n);
    const double p90 = Quantile(scratch, 0.9);
    const double median = Quantile(scratch, 0.5);
    scratch.assign(cpu_ring.begin(), cpu_ring.begin() + n);
    const double cpu = Quantile(scratch, 0.5);
    const int64_t rss = RssKib();
    if (first_rss == 0) {
      first_median = median;
      first_cpu = cpu;
      first_rss = rss;
    }
    worst_latency = std::max(worst_latency, std::abs(median / first_median - 1));
    worst_cpu = std::max(worst_cpu, std::abs(cpu / first_cpu - 1));
    worst_rss = std::max(worst_rss, std::abs(static_cast<double>(rss) / first_rss - 1));
    std::cout << absl::StrFormat("%-10d %10.4f %10.4f %10.4f %10d %8d %12d", t, median, p90,
                                 cpu, rss,
                                 (*decoder)->seq().cache().size(),
                                 (*decoder)->seq().cache().evicted_total())
              << std::endl;
  }
  std::cout << absl::StrFormat(
      "largest change from the first mark: median latency %.2f%%, median CPU time %.2f%%, "
      "RSS %.2f%%\n",
      worst_latency * 100, worst_cpu * 100, worst_rss * 100);
  return kExitOk;
}

}  // namespace

int RunBenchStream(const std::vector<std::string>& args) {
  std::vector<FlagSpec> specs = {
      {"model", FlagKind::kString, "", "GGUF model file"},
      {"policy", FlagKind::kString, "both", "streaming | recompute | both"},
      {"cache", FlagKind::kIntList, "256,512,1024,2048,4096", "cache sizes in cells"},
      {"tokens", FlagKind::kInt, "64", "timed decode steps per cache size"},
      {"recompute-tokens", FlagKind::kInt, "0",
       "timed steps of recompute, which is slow; 0 = --tokens"},
      {"sinks", FlagKind::kInt, "4", "attention sinks of the streaming policy"},
      {"threads", FlagKind::kInt, "0", "CPU threads; 0 = one per core"},
      {"report-at", FlagKind::kIntList, "",
       "long run: generated-token counts at which to report latency and RSS"},
      {"window", FlagKind::kInt, "2000", "long run: tokens each latency median covers"}};
  AddBackendFlags(&specs);
  FlagSet flags("bench stream", kSynopsis, std::move(specs));
  if (int rc = ParseOrExit(flags, args); rc >= 0) return rc;
  if (int rc = CheckBackendFlag(flags, "bench stream"); rc >= 0) return rc;
  if (!flags.Has("model")) {
    std::cerr << "sinkserve bench stream: --model is required\n";
    return kExitUsage;
  }
  const std::string policy = flags.GetString("policy");
  std::vector<std::string> kinds;
  if (policy == "streaming" || policy == "recompute") {
    kinds = {policy};
  } else if (policy == "both") {
    kinds = {"streaming", "recompute"};
  } else {
    std::cerr << "sinkserve bench stream: --policy must be streaming, recompute or both, not '"
              << policy << "'\n";
    return kExitUsage;
  }
  const std::vector<int64_t> caches = flags.GetIntList("cache");
  const int64_t sinks = flags.GetInt("sinks");
  const std::vector<int64_t> marks = flags.GetIntList("report-at");
  bool ok = !caches.empty() && sinks >= 0 && flags.GetInt("tokens") >= 1 &&
            flags.GetInt("recompute-tokens") >= 0 &&
            flags.GetInt("threads") >= 0 && flags.GetInt("window") >= 1 &&
            flags.GetInt("window") <= 10'000'000;
  for (int64_t c : caches) ok = ok && c > sinks && c <= (1 << 20);
  for (int64_t m : marks) ok = ok && m >= 1;
  if (!ok) {
    std::cerr << "sinkserve bench stream: need --cache sizes in (sinks, 1048576], "
                 "--sinks >= 0, --tokens >= 1, --recompute-tokens >= 0, --threads >= 0, 1 <= --window <= 1e7 and "
                 "--report-at marks >= 1\n";
    return kExitUsage;
  }
  if (!marks.empty() && kinds.size() != 1) {
    std::cerr << "sinkserve bench stream: --report-at needs one --policy\n";
    return kExitUsage;
  }

  auto weights = engine::ModelWeights::Load(flags.GetString("model"));
  if (!weights.ok()) return Fail("bench stream", weights.status());
  auto backend = BackendFromFlags(flags, *weights, static_cast<int>(flags.GetInt("threads")),
                                  engine::KvDtype::kF32);
  if (!backend.ok()) return Fail("bench stream", backend.status());
  if (!marks.empty()) {
    auto tokenizer = engine::Tokenizer::FromGguf((*weights)->file());
    if (!tokenizer.ok()) return Fail("bench stream", tokenizer.status());
    const int32_t bos = std::max<int32_t>(0, (*tokenizer)->vocab().bos_id);
    return LongRun(backend->get(), PolicyFor(kinds[0], caches[0], sinks), bos, marks,
                   flags.GetInt("window"));
  }
  const int64_t recompute_tokens = flags.GetInt("recompute-tokens") > 0
                                       ? flags.GetInt("recompute-tokens")
                                       : flags.GetInt("tokens");
  return Sweep(backend->get(), kinds, caches, sinks, flags.GetInt("tokens"), recompute_tokens);
}

}  // namespace sinkserve::cli
