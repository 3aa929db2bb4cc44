// `sinkserve eval recall`: a key-fact probe in the spirit of SirLLM's grocery
// task. A needle (a short span of tokens the model finds improbable) is put
// into filler text and repeated after a gap of G tokens; a cache that still
// holds the first copy lets the model predict the repetition (induction), one
// that evicted it does not. Reported: the mean NLL of the repeated needle's
// tokens under streaming, SirLLM at the same budget, and full attention.
// The default needle is a made-up character name after a naming cue: random
// rare-token spans are never copied by a model as small as stories260K, even
// with full attention (EVALUATION.md), so they would measure nothing.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/cpu_backend.h"
#include "engine/model_weights.h"
#include "engine/tokenizer.h"
#include "service/cli/commands.h"
#include "service/cli/perplexity_run.h"

namespace sinkserve::cli {
namespace {

constexpr char kSynopsis[] =
    "--model PATH --file FILLER --budget B --gaps G1,G2,... [--needle K]\n"
    "         [--trials T] [--prefix P] [--round-tokens R] [--seed N] [--threads N]\n"
    "Each trial: BOS, P filler tokens, --cue, a needle, `.`, G filler tokens,\n"
    "--recall-cue, the needle again. The needle is a made-up name of --needle seeded\n"
    "random syllables (--needle-kind name) or --needle seeded random tokens among\n"
    "the rarest in FILLER (--needle-kind tokens). Prints the mean NLL (nats) of the\n"
    "repeated needle's tokens for streaming(4,B-4), sirllm at\n"
    "budget B (E = B/4 and B/2, decay 1 and 0.9 per R tokens) and full (when the\n"
    "sequence fits the model's context); `first` is the same tokens' NLL at their\n"
    "first occurrence, i.e. what the model pays with nothing to recall.";

// Candidates the needle is drawn from: normal tokens of the filler ranked by
// frequency, rarest first, from rank `skip` on, `take` of them.
std::vector<int32_t> RareTokens(const engine::Vocab& vocab, absl::Span<const int32_t> filler,
                                int64_t vocab_size, int64_t skip, int64_t take) {
  std::vector<int64_t> count(vocab_size, 0);
  for (int32_t id : filler) ++count[id];
  std::vector<int32_t> ids;
  for (int32_t id = 0; id < vocab_size; ++id) {
    if (vocab.type(id) != engine::TokenType::kNormal) continue;
    if (vocab.bos_id == id || vocab.eos_id == id) continue;
    ids.push_back(id);
  }
  // Rarest first; ties by id so the choice is deterministic.
  std::stable_sort(ids.begin(), ids.end(),
                   [&](int32_t a, int32_t b) { return count[a] < count[b]; });
  if (static_cast<int64_t>(ids.size()) > skip + take) ids.resize(skip + take);
  ids.erase(ids.begin(), ids.begin() + std::min<int64_t>(skip, ids.size()));
  return ids;
}

// Syllables of made-up names ("Zubix", "Kwatorp"): the key fact of a
// TinyStories text is a character's name, which the model learned to repeat.
constexpr const char* kSyllables[] = {"zu", "bix", "kwa", "tor", "blo", "rp",  "quim",
                                      "vex", "dra", "mok", "fli", "zag", "nup",  "wig",
                                      "yol", "pax", "gri", "sto", "jub", "lek"};

std::string MakeName(std::mt19937& rng, int syllables) {
  std::string name;
  for (int i = 0; i < syllables; ++i) {
    name += kSyllables[rng() % (sizeof(kSyllables) / sizeof(kSyllables[0]))];
  }
  name[0] = static_cast<char>(name[0] - 'a' + 'A');
  return name;
}

struct Column {
  std::string name;
  memory::PolicyConfig policy;
  bool full = false;
};

}  // namespace

int RunEval(const std::vector<std::string>& args) {
  if (args.empty() || args[0] != "recall") {
    if (!args.empty() && (args[0] == "--help" || args[0] == "-h")) {
      std::cout << "usage: sinkserve eval recall " << kSynopsis << "\n";
      return kExitOk;
    }
    std::cerr << "sinkserve eval: expected a subcommand: recall\n";
    return kExitUsage;
  }
  std::vector<FlagSpec> specs = {
      {"model", FlagKind::kString, "", "GGUF model file"},
      {"file", FlagKind::kString, "", "filler text"},
      {"budget", FlagKind::kInt, "256", "KV cells of every bounded policy"},
      {"gaps", FlagKind::kIntList, "64,256,1024,4096", "filler tokens between the copies"},
      {"needle", FlagKind::kInt, "2", "needle length: syllables of a name, or tokens"},
      {"trials", FlagKind::kInt, "4", "needles (and filler offsets) averaged over"},
      {"prefix", FlagKind::kInt, "256", "filler tokens before the first copy"},
      {"round-tokens", FlagKind::kInt, "256", "tokens per sirllm decay round"},
      {"seed", FlagKind::kInt, "1", "seed of the needle choice"},
      {"pool-skip", FlagKind::kInt, "0", "needle pool: skip the N rarest tokens"},
      {"pool", FlagKind::kInt, "64", "needle pool: this many tokens, by rarity"},
      {"needle-kind", FlagKind::kString, "name",
       "name: a made-up name of --needle syllables; tokens: --needle rare tokens"},
      {"cue", FlagKind::kString, " there was a little dog named",
       "text put before the needle's first copy"},
      {"recall-cue", FlagKind::kString, ". One day,", "text put before its repetition"},
      {"threads", FlagKind::kInt, "0", "CPU threads; 0 = one per core"}};
  FlagSet flags("eval recall", kSynopsis, std::move(specs));
  if (int rc = ParseOrExit(flags, {args.begin() + 1, args.end()}); rc >= 0) return rc;
  if (!flags.Has("model") || !flags.Has("file")) {
    std::cerr << "sinkserve eval recall: --model and --file are required\n";
    return kExitUsage;
  }
  const int64_t budget = flags.GetInt("budget");
  const int64_t needle_len = flags.GetInt("needle");
  const int64_t trials = flags.GetInt("trials");
  const int64_t prefix = flags.GetInt("prefix");
  const std::vector<int64_t> gaps = flags.GetIntList("gaps");
  bool ok = budget >= 16 && budget <= (1 << 20) && needle_len >= 1 && needle_len <= 32 &&
            trials >= 1 && trials <= 1000 && prefix >= 0 && !gaps.empty() &&
            flags.GetInt("round-tokens") >= 1 && flags.GetInt("threads") >= 0;
  for (int64_t g : gaps) ok = ok && g >= 0 && g <= (1 << 20);
  if (!ok || prefix > (1 << 20)) {
    std::cerr << "sinkserve eval recall: need 16 <= --budget <= 2^20, 1 <= --needle <= 32, "
                 "--trials >= 1, --prefix >= 0, gaps in [0, 2^20], --round-tokens >= 1\n";
    return kExitUsage;
  }

  auto weights = engine::ModelWeights::Load(flags.GetString("model"));
  if (!weights.ok()) return Fail("eval recall", weights.status());
  auto tokenizer = engine::Tokenizer::FromGguf((*weights)->file());
  if (!tokenizer.ok()) return Fail("eval recall", tokenizer.status());
  auto filler = TokenizeFile(**tokenizer, flags.GetString("file"), 0);
  if (!filler.ok()) return Fail("eval recall", filler.status());
  filler->erase(filler->begin());  // TokenizeFile's BOS; each trial adds its own
  const int64_t max_gap = *std::max_element(gaps.begin(), gaps.end());
  // Trials start at different offsets, spread over the filler.
  const int64_t needed = prefix + max_gap;
  const int64_t stride =
      trials > 1 ? (static_cast<int64_t>(filler->size()) - needed) / (trials - 1) : 0;
  if (static_cast<int64_t>(filler->size()) < needed) {
    return Fail("eval recall", absl::InvalidArgumentError(absl::StrCat(
                                   flags.GetString("file"), " gives ", filler->size(),
                                   " tokens; --prefix and the largest gap need ", needed)));
  }
  auto backend = engine::NewCpuBackend(*weights, {static_cast<int>(flags.GetInt("threads"))});
  if (!backend.ok()) return Fail("eval recall", backend.status());
  const engine::ModelConfig& config = (*backend)->config();

  auto cue = (*tokenizer)->Encode(flags.GetString("cue"), {});
  if (!cue.ok()) return Fail("eval recall", cue.status());
  auto recall_cue = (*tokenizer)->Encode(flags.GetString("recall-cue"), {});
  if (!recall_cue.ok()) return Fail("eval recall", recall_cue.status());
  const std::vector<int32_t> rare =
      RareTokens((*tokenizer)->vocab(), *filler, config.vocab_size,
                 flags.GetInt("pool-skip"), flags.GetInt("pool"));
  if (static_cast<int64_t>(rare.size()) < needle_len) {
    return Fail("eval recall", absl::InvalidArgumentError("vocabulary too small for the needle"));
  }

  std::vector<Column> columns;
  {
    Column c;
    c.policy.kind = memory::PolicyKind::kStreaming;
    c.policy.sinks = 4;
    c.policy.window = budget - 4;
    columns.push_back(c);
    for (int64_t entropy : {budget / 4, budget / 2}) {
      for (float decay : {1.0f, 0.9f}) {
        Column s;
        s.policy.kind = memory::PolicyKind::kSirLlm;
        s.policy.sinks = 4;
        s.policy.entropy = entropy;
        s.policy.window = budget - 4 - entropy;
        s.policy.decay = decay;
        columns.push_back(s);
      }
    }
    Column f;
    f.full = true;
    columns.push_back(f);
  }
  for (Column& c : columns) c.name = c.policy.ToString();

  std::cout << absl::StrFormat(
      "recall: budget %d, %d trials, prefix %d, decay round %d tokens; needle: %s\n"
      "mean NLL (nats) per needle token at the repetition; lower = recalled\n",
      budget, trials, prefix, flags.GetInt("round-tokens"),
      flags.GetString("needle-kind") == "name"
          ? absl::StrCat("a made-up name of ", needle_len, " syllables")
          : absl::StrCat(needle_len, " rare tokens"));
  std::cout << absl::StrFormat("%-7s %7s", "gap", "first");
  for (const Column& c : columns) std::cout << absl::StrFormat(" %21s", c.name);
  std::cout << std::endl;

  const bool names = flags.GetString("needle-kind") == "name";
  if (!names && flags.GetString("needle-kind") != "tokens") {
    std::cerr << "sinkserve eval recall: --needle-kind must be name or tokens\n";
    return kExitUsage;
  }
  std::mt19937 rng(static_cast<uint32_t>(flags.GetInt("seed")));
  std::vector<std::vector<int32_t>> needles;
  // Closes the naming sentence, and gives the last needle token a target.
  auto period_ids = (*tokenizer)->Encode(".", {});
  if (!period_ids.ok() || period_ids->empty()) {
    return Fail("eval recall", absl::InternalError("cannot encode '.'"));
  }
  const int32_t period = period_ids->back();
  for (int64_t t = 0; t < trials; ++t) {
    if (names) {
      const std::string name = MakeName(rng, needle_len);
      auto ids = (*tokenizer)->Encode(" " + name, {});
      if (!ids.ok()) return Fail("eval recall", ids.status());
      needles.push_back(*ids);
      if (t < 8) {
        std::cout << (t == 0 ? "needles:" : ",") << " " << name << " (" << ids->size()
                  << " tokens)";
      }
      if (t + 1 == trials) std::cout << (trials > 8 ? ", ...\n" : "\n");
      continue;
    }
    std::vector<int32_t> pool = rare;
    std::shuffle(pool.begin(), pool.end(), rng);
    needles.emplace_back(pool.begin(), pool.begin() + needle_len);
  }

  double largest_se = 0;  // standard error of a cell's mean over trials
  for (int64_t gap : gaps) {
    double first_sum = 0;
    std::vector<double> sums(columns.size(), 0);
    std::vector<double> squares(columns.size(), 0);
    std::vector<bool> ran(columns.size(), true);
    for (int64_t t = 0; t < trials; ++t) {
      const int32_t* f = filler->data() + t * stride;
      std::vector<int32_t> ids = {(*tokenizer)->vocab().bos_id >= 0
                                      ? (*tokenizer)->vocab().bos_id
                                      : 0};
      ids.insert(ids.end(), f, f + prefix);
      ids.insert(ids.end(), cue->begin(), cue->end());
      const int64_t first_at = ids.size();
      ids.insert(ids.end(), needles[t].begin(), needles[t].end());
      ids.push_back(period);
      ids.insert(ids.end(), f + prefix, f + prefix + gap);
      ids.insert(ids.end(), recall_cue->begin(), recall_cue->end());
      const int64_t second_at = ids.size();
      ids.insert(ids.end(), needles[t].begin(), needles[t].end());
      ids.push_back(period);
      for (size_t c = 0; c < columns.size(); ++c) {
        if (columns[c].full && static_cast<int64_t>(ids.size()) > config.context_length) {
          ran[c] = false;
          continue;
        }
        PerplexityOptions options;
        options.policy = columns[c].policy;
        options.round_tokens = flags.GetInt("round-tokens");
        auto scored = ScoreTokens(backend->get(), ids, options);
        if (!scored.ok()) return Fail("eval recall", scored.status());
        // scored[i] predicts ids[i + 1]; needle token k sits at at + k.
        const int64_t len = needles[t].size();
        auto mean = [&](int64_t at) {
          double sum = 0;
          for (int64_t k = 0; k < len; ++k) sum += (*scored)[at + k - 1].nll;
          return sum / len;
        };
        const double m = mean(second_at);
        sums[c] += m;
        squares[c] += m * m;
        if (c == 0) first_sum += mean(first_at);
      }
    }
    std::cout << absl::StrFormat("%-7d %7.3f", gap, first_sum / trials);
    for (size_t c = 0; c < columns.size(); ++c) {
      if (ran[c]) {
        const double mean = sums[c] / trials;
        if (trials > 1) {
          const double var = std::max(0.0, squares[c] / trials - mean * mean) * trials /
                             (trials - 1);
          largest_se = std::max(largest_se, std::sqrt(var / trials));
        }
        std::cout << absl::StrFormat(" %21.3f", mean);
      } else {
        std::cout << absl::StrFormat(" %21s", "-");
      }
    }
    std::cout << std::endl;
    std::cerr << "eval recall: gap " << gap << " done\n";
  }
  std::cout << absl::StrFormat("largest standard error of a cell: %.3f nats\n", largest_se);
  return kExitOk;
}

}  // namespace sinkserve::cli
