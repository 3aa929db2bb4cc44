// `sinkserve perplexity`: perplexity of a text under a KV cache policy, with
// the semantics of StreamingLLM's eval_long_ppl.py (see perplexity_run.h).
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/gguf/model_weights.h"
#include "engine/tokenizer/tokenizer.h"
#include "service/cli/backend_flags.h"
#include "service/cli/commands.h"
#include "service/cli/perplexity_run.h"
#include "service/cli/policy_flags.h"

namespace sinkserve::cli {
namespace {

constexpr char kSynopsis[] =
    "--model PATH --file TEXT [--policy P --sinks S --window W --entropy E --decay D]\n"
    "         [--round-tokens R] [--chunk N] [--max-tokens N] [--bucket N] [--csv PATH]\n"
    "Tokenizes TEXT as one text, prepends BOS once, keeps the first --max-tokens ids\n"
    "and feeds them one at a time under the policy; the logits after ids[i] score\n"
    "ids[i+1]. Prints `tokens A-B ppl X` per --bucket scored tokens, then\n"
    "`ppl=X tokens=N`. --chunk N (policy full only) scores consecutive N-token\n"
    "chunks, each in a fresh cache. --csv writes index,token,target,nll per token.";

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

absl::Status WriteCsv(const std::string& path, const std::vector<ScoredToken>& scored) {
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) return absl::UnavailableError(absl::StrCat("cannot write ", path));
  std::fprintf(f, "index,token,target,nll\n");
  for (const ScoredToken& s : scored) {
    std::fprintf(f, "%lld,%d,%d,%.9g\n", static_cast<long long>(s.index), s.token, s.target,
                 s.nll);
  }
  if (std::fclose(f) != 0) return absl::UnavailableError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

}  // namespace

int RunPerplexity(const std::vector<std::string>& args) {
  std::vector<FlagSpec> specs = {
      {"model", FlagKind::kString, "", "GGUF model file"},
      {"file", FlagKind::kString, "", "text file, tokenized as one text"},
      {"round-tokens", FlagKind::kInt, "256", "tokens per sirllm decay round"},
      {"chunk", FlagKind::kInt, "0", "policy full: tokens per fresh-cache chunk; 0 = off"},
      {"max-tokens", FlagKind::kInt, "0", "keep the first N ids (BOS included); 0 = all"},
      {"bucket", FlagKind::kInt, "2000", "scored tokens per printed bucket"},
      {"threads", FlagKind::kInt, "0", "CPU threads; 0 = one per core"},
      {"csv", FlagKind::kString, "", "write index,token,target,nll rows to PATH"},
      {"quiet", FlagKind::kBool, "false", "no progress on stderr"}};
  AddPolicyFlags(&specs, "full");
  AddBackendFlags(&specs);
  FlagSet flags("perplexity", kSynopsis, std::move(specs));
  if (int rc = ParseOrExit(flags, args); rc >= 0) return rc;
  if (int rc = CheckBackendFlag(flags, "perplexity"); rc >= 0) return rc;
  if (!flags.Has("model") || !flags.Has("file")) {
    std::cerr << "sinkserve perplexity: --model and --file are required\n";
    return kExitUsage;
  }
  if (flags.GetInt("round-tokens") < 1 || flags.GetInt("chunk") < 0 ||
      flags.GetInt("max-tokens") < 0 || flags.GetInt("bucket") < 1 ||
      flags.GetInt("threads") < 0) {
    std::cerr << "sinkserve perplexity: --round-tokens and --bucket must be >= 1; "
                 "--chunk, --max-tokens and --threads >= 0\n";
    return kExitUsage;
  }
  auto policy = PolicyFromFlags(flags);
  if (!policy.ok()) {
    std::cerr << "sinkserve perplexity: " << policy.status().message() << "\n";
    return kExitUsage;
  }
  if (flags.GetInt("chunk") > 0 && policy->Budget().has_value()) {
    std::cerr << "sinkserve perplexity: --chunk applies to --policy full only\n";
    return kExitUsage;
  }

  auto weights = engine::ModelWeights::Load(flags.GetString("model"));
  if (!weights.ok()) return Fail("perplexity", weights.status());
  auto tokenizer = engine::Tokenizer::FromGguf((*weights)->file());
  if (!tokenizer.ok()) return Fail("perplexity", tokenizer.status());
  auto ids = TokenizeFile(**tokenizer, flags.GetString("file"), flags.GetInt("max-tokens"));
  if (!ids.ok()) return Fail("perplexity", ids.status());
  if (ids->size() < 2) {
    return Fail("perplexity", absl::InvalidArgumentError(absl::StrCat(
                                  flags.GetString("file"), " gives ", ids->size(),
                                  " tokens; at least 2 are needed")));
  }

  auto backend = BackendFromFlags(flags, *weights, static_cast<int>(flags.GetInt("threads")),
                                  engine::KvDtype::kF32);
  if (!backend.ok()) return Fail("perplexity", backend.status());

  PerplexityOptions options;
  options.policy = *policy;
  options.round_tokens = flags.GetInt("round-tokens");
  options.chunk = flags.GetInt("chunk");
  const Clock::time_point start = Clock::now();
  Clock::time_point last_report = start;
  if (!flags.GetBool("quiet")) {
    options.on_progress = [&](int64_t done, int64_t total) {
      if (Seconds(last_report) < 2.0) return;
      last_report = Clock::now();
      const double elapsed = Seconds(start);
      std::cerr << absl::StrFormat("perplexity: %d/%d tokens, %.0f tok/s\n", done, total,
                                   done / elapsed);
    };
  }
  auto scored = ScoreTokens(backend->get(), *ids, options);
  if (!scored.ok()) return Fail("perplexity", scored.status());

  // Buckets cover positions of the fed token, so that chunked runs (which
  // skip chunk boundaries) line up with the others.
  const int64_t bucket = flags.GetInt("bucket");
  const int64_t n = scored->size();
  const int64_t fed = static_cast<int64_t>(ids->size()) - 1;
  size_t next = 0;
  for (int64_t b = 0; b < fed; b += bucket) {
    const size_t first = next;
    while (next < scored->size() && (*scored)[next].index < b + bucket) ++next;
    std::cout << absl::StrFormat(
        "tokens %d-%d ppl %.4f\n", b, std::min(b + bucket, fed) - 1,
        Perplexity(absl::MakeConstSpan(*scored).subspan(first, next - first)));
  }
  std::cout << absl::StrFormat("ppl=%.4f tokens=%d\n", Perplexity(*scored), n);
  if (flags.Has("csv")) {
    if (absl::Status s = WriteCsv(flags.GetString("csv"), *scored); !s.ok()) {
      return Fail("perplexity", s);
    }
  }
  if (!flags.GetBool("quiet")) {
    const double elapsed = Seconds(start);
    std::cerr << absl::StrFormat("perplexity: %s, %d tokens in %.1f s (%.0f tok/s)\n",
                                 policy->ToString(), n, elapsed, n / elapsed);
  }
  return kExitOk;
}

}  // namespace sinkserve::cli
