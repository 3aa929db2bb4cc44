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
#include "engine/cpu/cpu_backend.h"
#include "engine/gguf/model_weights.h"
#include "engine/tokenizer/tokenizer.h"
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
    "first occurrence, i.e. what the model pays with nothing to recall.\n"
    "--pin-fact: the fact (--cue, the needle, `.`) opens the session like a system\n"
    "prompt (after --prefix filler tokens, default 0 here) and long gaps follow\n"
    "(e.g. --gaps 5000,20000,100000; the filler is read cyclically); columns are\n"
    "streaming(4,B-4) and sirllm(4,B/2,B/2-4,0.9), each also with the fact pinned.\n"
    "One pass per trial and column: at each gap a copy of the cache is probed.";

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
  bool pin = false;  // --pin-fact: the fact's cells are pinned
};

// A copy of `seq` (cells, pins, K/V rows, pending tokens) fed on its own.
absl::StatusOr<std::unique_ptr<engine::Sequence>> Fork(engine::Backend* backend,
                                                       const engine::Sequence& seq) {
  const memory::KvCache& cache = seq.cache();
  const std::vector<int32_t> slots(cache.context_slots().begin(), cache.context_slots().end());
  std::string rows;
  if (absl::Status s = seq.kv()->ExportSlots(slots, &rows); !s.ok()) return s;
  absl::StatusOr<std::unique_ptr<engine::KvStorage>> kv = backend->NewKvStorage(cache.capacity());
  if (!kv.ok()) return kv.status();
  if (absl::Status s = (*kv)->ImportSlots(slots, rows); !s.ok()) return s;
  return engine::Sequence::FromParts(backend, cache.Copy(), std::move(*kv), seq.pending(),
                                     seq.max_step_tokens());
}

// Feeds `ids` one at a time (each fed token is one step, as in ScoreTokens);
// nll[i] = -ln p(ids[i] | what came before), for i >= 1, nll[0] = 0.
absl::StatusOr<std::vector<double>> FeedScored(engine::Sequence* seq,
                                               absl::Span<const int32_t> ids) {
  std::vector<double> nll(ids.size(), 0.0);
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) nll[i] = engine::Surprisal(seq->last_logits(), ids[i]);
    if (absl::Status s = seq->Feed(ids.subspan(i, 1), engine::LogitsMode::kLast); !s.ok()) {
      return s;
    }
  }
  return nll;
}

struct PinnedRecallSetup {
  int64_t budget = 0;
  int64_t prefix = 0;
  int64_t round_tokens = 0;
  int64_t trials = 0;
  std::vector<int64_t> gaps;  // ascending
};

// --pin-fact: one pass per trial and column over the longest gap, probing a
// fork of the cache at every gap. Prints the table; kExitOk or an error code.
int RunPinnedRecall(engine::Backend* backend, const engine::Vocab& vocab,
                    absl::Span<const int32_t> filler, absl::Span<const int32_t> cue,
                    absl::Span<const int32_t> recall_cue, int32_t period,
                    const std::vector<std::vector<int32_t>>& needles,
                    const PinnedRecallSetup& setup) {
  std::vector<Column> columns;
  for (int kind = 0; kind < 2; ++kind) {
    for (bool pin : {false, true}) {
      Column c;
      c.pin = pin;
      c.policy.sinks = 4;
      if (kind == 0) {
        c.policy.kind = memory::PolicyKind::kStreaming;
        c.policy.window = static_cast<int>(setup.budget - 4);
      } else {
        c.policy.kind = memory::PolicyKind::kSirLlm;
        c.policy.entropy = static_cast<int>(setup.budget / 2);
        c.policy.window = static_cast<int>(setup.budget - 4 - setup.budget / 2);
        c.policy.decay = 0.9f;
      }
      c.name = c.policy.ToString() + (pin ? "+pin" : "");
      columns.push_back(c);
    }
  }
  std::cout << absl::StrFormat("%-7s %7s", "gap", "first");
  for (const Column& c : columns) std::cout << absl::StrFormat(" %24s", c.name);
  std::cout << std::endl;

  const size_t n_gaps = setup.gaps.size();
  // sums[g][c], squares[g][c]: mean NLL of the repeated needle per trial.
  std::vector<std::vector<double>> sums(n_gaps, std::vector<double>(columns.size(), 0));
  std::vector<std::vector<double>> squares = sums;
  double first_sum = 0;
  const int64_t longest = setup.gaps.back();
  const auto start = absl::Now();
  for (int64_t t = 0; t < setup.trials; ++t) {
    // Each trial reads the filler from its own offset, cyclically.
    const int64_t offset = (t * static_cast<int64_t>(filler.size())) / setup.trials;
    auto filler_at = [&](int64_t i) { return filler[(offset + i) % filler.size()]; };
    std::vector<int32_t> fact = {vocab.bos_id >= 0 ? vocab.bos_id : 0};
    for (int64_t i = 0; i < setup.prefix; ++i) fact.push_back(filler_at(i));
    const int64_t fact_first = static_cast<int64_t>(fact.size());
    fact.insert(fact.end(), cue.begin(), cue.end());
    const int64_t needle_at = static_cast<int64_t>(fact.size());
    fact.insert(fact.end(), needles[t].begin(), needles[t].end());
    fact.push_back(period);
    std::vector<int32_t> probe(recall_cue.begin(), recall_cue.end());
    const int64_t probe_needle_at = static_cast<int64_t>(probe.size());
    probe.insert(probe.end(), needles[t].begin(), needles[t].end());
    const int64_t len = static_cast<int64_t>(needles[t].size());
    auto mean = [len](const std::vector<double>& nll, int64_t at) {
      double sum = 0;
      for (int64_t k = 0; k < len; ++k) sum += nll[at + k];
      return sum / len;
    };
    for (size_t c = 0; c < columns.size(); ++c) {
      const Column& column = columns[c];
      engine::SequenceOptions options;
      options.policy = column.policy;
      options.max_step_tokens = 1;
      absl::StatusOr<std::unique_ptr<engine::Sequence>> seq =
          engine::Sequence::Create(backend, options);
      if (!seq.ok()) return Fail("eval recall", seq.status());
      engine::Sequence& s = **seq;
      if (column.pin) {
        if (absl::Status st = s.mutable_cache().PinTokens(
                "fact", fact_first, static_cast<int64_t>(fact.size()) - fact_first,
                column.policy.PinLimit());
            !st.ok()) {
          return Fail("eval recall", st);
        }
      }
      absl::StatusOr<std::vector<double>> fact_nll = FeedScored(&s, fact);
      if (!fact_nll.ok()) return Fail("eval recall", fact_nll.status());
      if (c == 0) first_sum += mean(*fact_nll, needle_at);
      const bool decays = column.policy.kind == memory::PolicyKind::kSirLlm;
      int64_t fed = static_cast<int64_t>(fact.size());
      size_t g = 0;
      for (int64_t i = 0; i <= longest; ++i) {
        while (g < n_gaps && setup.gaps[g] == i) {
          absl::StatusOr<std::unique_ptr<engine::Sequence>> fork = Fork(backend, s);
          if (!fork.ok()) return Fail("eval recall", fork.status());
          absl::StatusOr<std::vector<double>> nll = FeedScored(fork->get(), probe);
          if (!nll.ok()) return Fail("eval recall", nll.status());
          // A fork has no logits yet: the probe's first token is predicted
          // by the original's.
          (*nll)[0] = engine::Surprisal(s.last_logits(), probe[0]);
          const double m = mean(*nll, probe_needle_at);
          sums[g][c] += m;
          squares[g][c] += m * m;
          ++g;
        }
        if (i == longest) break;
        if (decays && fed % setup.round_tokens == 0) {
          if (absl::Status st = s.mutable_cache().Decay(column.policy.decay); !st.ok()) {
            return Fail("eval recall", st);
          }
        }
        const int32_t id = filler_at(setup.prefix + i);
        if (absl::Status st = s.Feed(absl::MakeConstSpan(&id, 1), engine::LogitsMode::kLast);
            !st.ok()) {
          return Fail("eval recall", st);
        }
        ++fed;
        if ((i + 1) % 20000 == 0) {
          std::cerr << absl::StrFormat("eval recall: trial %d/%d, %s, %d/%d tokens, %.0f s\n",
                                       t + 1, setup.trials, column.name, i + 1, longest,
                                       absl::ToDoubleSeconds(absl::Now() - start));
        }
      }
    }
  }
  double largest_se = 0;
  for (size_t g = 0; g < n_gaps; ++g) {
    std::cout << absl::StrFormat("%-7d %7.3f", setup.gaps[g], first_sum / setup.trials);
    for (size_t c = 0; c < columns.size(); ++c) {
      const double m = sums[g][c] / setup.trials;
      if (setup.trials > 1) {
        const double var = std::max(0.0, squares[g][c] / setup.trials - m * m) * setup.trials /
                           (setup.trials - 1);
        largest_se = std::max(largest_se, std::sqrt(var / setup.trials));
      }
      std::cout << absl::StrFormat(" %24.3f", m);
    }
    std::cout << std::endl;
  }
  std::cout << absl::StrFormat("largest standard error of a cell: %.3f nats\n", largest_se);
  return kExitOk;
}

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
      {"pin-fact", FlagKind::kBool, "false",
       "the fact opens the session and is pinned in half the columns (see above)"},
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
  std::vector<int64_t> gaps = flags.GetIntList("gaps");
  const bool pin_fact = flags.GetBool("pin-fact");
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
  if (!pin_fact && static_cast<int64_t>(filler->size()) < needed) {
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
  if (!pin_fact) {
    std::cout << absl::StrFormat("%-7s %7s", "gap", "first");
    for (const Column& c : columns) std::cout << absl::StrFormat(" %21s", c.name);
    std::cout << std::endl;
  }

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

  if (pin_fact) {
    PinnedRecallSetup setup;
    setup.budget = budget;
    setup.prefix = prefix;
    setup.round_tokens = flags.GetInt("round-tokens");
    setup.trials = trials;
    std::sort(gaps.begin(), gaps.end());
    gaps.erase(std::unique(gaps.begin(), gaps.end()), gaps.end());
    setup.gaps = gaps;
    return RunPinnedRecall(backend->get(), (*tokenizer)->vocab(), *filler, *cue, *recall_cue,
                           period, needles, setup);
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
