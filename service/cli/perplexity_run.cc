#include "service/cli/perplexity_run.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "memory/status_macros.h"

namespace sinkserve::cli {
namespace {

// Largest prefill step of chunk mode; bounds activation memory.
constexpr int kMaxChunkStep = 512;

absl::Status ScoreChunked(engine::Backend* backend, absl::Span<const int32_t> ids,
                          const PerplexityOptions& options, std::vector<ScoredToken>* out) {
  const int64_t n = ids.size();
  const int64_t total = n - (n + options.chunk - 1) / options.chunk;
  int64_t next_report = options.progress_every;
  for (int64_t begin = 0; begin < n; begin += options.chunk) {
    const int64_t len = std::min<int64_t>(options.chunk, n - begin);
    engine::SequenceOptions seq_options;
    seq_options.policy = options.policy;
    seq_options.capacity = static_cast<int>(len);
    seq_options.max_step_tokens = static_cast<int>(std::min<int64_t>(len, kMaxChunkStep));
    SINKSERVE_ASSIGN_OR_RETURN(std::unique_ptr<engine::Sequence> seq,
                               engine::Sequence::Create(backend, seq_options));
    const int64_t vocab = backend->config().vocab_size;
    int64_t row = 0;  // index in the chunk of the next logits row
    SINKSERVE_RETURN_IF_ERROR(seq->Feed(
        ids.subspan(begin, len), engine::LogitsMode::kAll,
        [&](absl::Span<const float> rows, int64_t count) {  // rows: (count, vocab)
          for (int64_t r = 0; r < count; ++r, ++row) {
            if (row + 1 >= len) continue;  // the chunk's last token predicts nothing here
            const int64_t i = begin + row;
            absl::Span<const float> logits = rows.subspan(r * vocab, vocab);
            out->push_back({i, ids[i], ids[i + 1], engine::Surprisal(logits, ids[i + 1])});
          }
        }));
    if (options.on_progress && static_cast<int64_t>(out->size()) >= next_report) {
      options.on_progress(out->size(), total);
      next_report = out->size() + options.progress_every;
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<ScoredToken>> ScoreTokens(engine::Backend* backend,
                                                     absl::Span<const int32_t> ids,
                                                     const PerplexityOptions& options) {
  if (backend == nullptr) return absl::InvalidArgumentError("no backend");
  if (ids.size() < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("need at least 2 tokens to score, got ", ids.size()));
  }
  SINKSERVE_RETURN_IF_ERROR(options.policy.Validate());
  const int64_t vocab = backend->config().vocab_size;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " outside the vocabulary of ", vocab));
    }
  }
  if (options.round_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("round tokens must be >= 1, got ", options.round_tokens));
  }
  if (options.chunk < 0) {
    return absl::InvalidArgumentError(absl::StrCat("chunk must be >= 0, got ", options.chunk));
  }
  const bool bounded = options.policy.Budget().has_value();
  if (options.chunk > 0 && bounded) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--chunk applies to policy full only, not ", options.policy.ToString()));
  }
  if (!bounded && static_cast<int64_t>(ids.size()) > memory::kMaxPolicyCells) {
    return absl::InvalidArgumentError("text too long for policy full: use --chunk");
  }

  std::vector<ScoredToken> out;
  out.reserve(ids.size() - 1);
  if (options.chunk > 0) {
    SINKSERVE_RETURN_IF_ERROR(ScoreChunked(backend, ids, options, &out));
    return out;
  }

  engine::SequenceOptions seq_options;
  seq_options.policy = options.policy;
  seq_options.max_step_tokens = 1;
  // `full` holds every fed token (the last id is only a target).
  if (!bounded) seq_options.capacity = static_cast<int>(ids.size() - 1);
  SINKSERVE_ASSIGN_OR_RETURN(std::unique_ptr<engine::Sequence> seq,
                             engine::Sequence::Create(backend, seq_options));
  const bool decays = options.policy.kind == memory::PolicyKind::kSirLlm;
  const int64_t total = ids.size() - 1;
  for (int64_t i = 0; i < total; ++i) {
    if (decays && i > 0 && i % options.round_tokens == 0) {
      SINKSERVE_RETURN_IF_ERROR(seq->mutable_cache().Decay(options.policy.decay));
    }
    SINKSERVE_RETURN_IF_ERROR(seq->Feed(ids.subspan(i, 1), engine::LogitsMode::kLast));
    out.push_back({i, ids[i], ids[i + 1], engine::Surprisal(seq->last_logits(), ids[i + 1])});
    if (options.on_fed) options.on_fed(i, *seq);
    if (options.on_progress && (i + 1) % options.progress_every == 0) {
      options.on_progress(i + 1, total);
    }
  }
  return out;
}

absl::StatusOr<std::vector<int32_t>> TokenizeFile(const engine::Tokenizer& tokenizer,
                                                  const std::string& path, int64_t max_tokens) {
  std::error_code error;
  if (std::filesystem::is_directory(path, error)) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is a directory, not a text file"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::UnavailableError(absl::StrCat("cannot read ", path));
  std::vector<int32_t> ids;
  if (tokenizer.vocab().bos_id >= 0) ids.push_back(tokenizer.vocab().bos_id);
  SINKSERVE_ASSIGN_OR_RETURN(std::vector<int32_t> body, tokenizer.Encode(text.str(), {}));
  ids.insert(ids.end(), body.begin(), body.end());
  if (max_tokens > 0 && static_cast<int64_t>(ids.size()) > max_tokens) ids.resize(max_tokens);
  return ids;
}

double Perplexity(absl::Span<const ScoredToken> scored) {
  if (scored.empty()) return 0;
  double sum = 0;
  for (const ScoredToken& s : scored) sum += s.nll;
  return std::exp(sum / scored.size());
}

}  // namespace sinkserve::cli
