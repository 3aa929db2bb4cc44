// `sinkserve generate`: continues a prompt on the CPU backend, streaming text.
#include <algorithm>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/backend.h"
#include "engine/generator.h"
#include "engine/gguf/model_fingerprint.h"
#include "engine/gguf/model_weights.h"
#include "engine/sampler.h"
#include "engine/sequence.h"
#include "engine/session.h"
#include "engine/tokenizer/tokenizer.h"
#include "memory/rocksdb_session_store.h"
#include "service/cli/backend_flags.h"
#include "service/cli/commands.h"
#include "service/cli/policy_flags.h"

namespace sinkserve::cli {
namespace {

constexpr char kSynopsis[] =
    "--model PATH [--prompt TEXT] [--max-tokens N] [sampling flags] [--ids]\n"
    "         [--policy full|window|streaming|sirllm|recompute --sinks S --window W ...]\n"
    "Continues TEXT (or, without it, starts from BOS) and streams the text to stdout;\n"
    "timings go to stderr. Defaults follow llama.cpp: temperature 0.8, top-k 40,\n"
    "top-p 0.95, min-p 0.05, no repetition penalty; --temperature 0 is greedy.\n"
    "Generation ends at EOS, at BOS (llama2.c models end a text so), at --stop,\n"
    "after --max-tokens or when the context is full. Under a bounded --policy the\n"
    "KV cache never outgrows its budget, so generation can go on indefinitely.\n"
    "\n"
    "With --db DIR --session ID the turn is appended to a persistent session: it is\n"
    "restored from the store in DIR (created if missing) or created, the prompt is\n"
    "fed after what the session holds (BOS only for a new session), the reply is\n"
    "streamed and the session is checkpointed. A session keeps the --policy,\n"
    "--kv-dtype, --ctx-size, --batch and sampling settings it was created with;\n"
    "giving a different --policy or --kv-dtype for an existing session is an error,\n"
    "sampling flags given again apply to this turn only (the random stream goes on\n"
    "from where the session left it; --seed is then ignored). --then TEXT runs a\n"
    "second turn in the same process, exactly as a second call would.";

double PerSecond(int n, double seconds) { return seconds > 0 ? n / seconds : 0.0; }

absl::Status WriteLogits(const std::string& path, const std::vector<float>& logits) {
  std::ofstream out(path, std::ios::binary);
  // float32 little-endian (n, vocab); every platform sinkserve targets is LE.
  out.write(reinterpret_cast<const char*>(logits.data()), logits.size() * sizeof(float));
  if (!out) return absl::UnavailableError("cannot write " + path);
  return absl::OkStatus();
}

// The sampling flags over `base`: every flag when `all`, else only those
// given on the command line. A negative --seed draws a random one.
engine::SamplerOptions SamplingFromFlags(const FlagSet& flags, engine::SamplerOptions base,
                                         bool all) {
  auto given = [&](const char* name) { return all || flags.Has(name); };
  if (given("temperature")) base.temperature = flags.GetDouble("temperature");
  if (given("top-k")) base.top_k = flags.GetInt("top-k");
  if (given("top-p")) base.top_p = flags.GetDouble("top-p");
  if (given("min-p")) base.min_p = flags.GetDouble("min-p");
  if (given("repeat-penalty")) base.repeat_penalty = flags.GetDouble("repeat-penalty");
  if (given("presence-penalty")) base.presence_penalty = flags.GetDouble("presence-penalty");
  if (given("repeat-last-n")) base.penalty_last_n = flags.GetInt("repeat-last-n");
  if (given("seed")) {
    int64_t seed = flags.GetInt("seed");
    if (seed < 0) seed = std::random_device()() & 0x7fffffff;
    base.seed = static_cast<uint64_t>(seed);
  }
  return base;
}

bool AnySamplingFlag(const FlagSet& flags) {
  for (const char* name : {"temperature", "top-k", "top-p", "min-p", "repeat-penalty",
                           "presence-penalty", "repeat-last-n"}) {
    if (flags.Has(name)) return true;
  }
  return false;
}

// Like Fail, with the status code: callers (and scripts) can tell DATA_LOSS
// from NOT_FOUND from a refused directory.
int FailCode(const absl::Status& status) {
  std::cerr << "sinkserve generate: " << absl::StatusCodeToString(status.code()) << ": "
            << status.message() << "\n";
  return kExitError;
}

int GenerateInSession(const FlagSet& flags, std::shared_ptr<const engine::ModelWeights> weights,
                      const engine::Tokenizer& tokenizer);

// What a run collects for --ids and --dump-logits.
struct TurnOutput {
  std::vector<int32_t> ids;
  std::vector<float> logits;  // (n, vocab)
};

engine::GeneratorOptions GeneratorOptionsFromFlags(const FlagSet& flags, int prefill_chunk) {
  engine::GeneratorOptions options;
  options.max_tokens = static_cast<int>(flags.GetInt("max-tokens"));
  options.prefill_chunk = prefill_chunk;
  if (!flags.GetString("stop").empty()) options.stop_strings.push_back(flags.GetString("stop"));
  options.stop_at_end_of_text = !flags.GetBool("ignore-eos");
  return options;
}

// Text to stdout as it streams (unless --ids), ids and logits into `out`.
engine::GeneratorCallbacks CallbacksFor(const FlagSet& flags, TurnOutput* out) {
  engine::GeneratorCallbacks callbacks;
  callbacks.on_ids = [out](int32_t id) { out->ids.push_back(id); };
  if (!flags.GetBool("ids")) {
    callbacks.on_text = [](std::string_view piece) { std::cout << piece << std::flush; };
  }
  if (flags.Has("dump-logits")) {
    callbacks.on_logits = [out](absl::Span<const float> logits, int64_t) {
      out->logits.insert(out->logits.end(), logits.begin(), logits.end());
    };
  }
  return callbacks;
}

}  // namespace

int RunGenerate(const std::vector<std::string>& args) {
  std::vector<FlagSpec> specs = {
      {"model", FlagKind::kString, "", "GGUF model file"},
       {"prompt", FlagKind::kString, "", "text to continue (BOS is prepended when the vocab asks)"},
       {"prompt-ids", FlagKind::kIntList, "",
        "token ids to start from instead of --prompt, used as given (no BOS added)"},
       {"max-tokens", FlagKind::kInt, "256", "tokens to generate at most"},
       {"temperature", FlagKind::kDouble, "0.8", "softmax temperature; 0 = greedy"},
       {"top-k", FlagKind::kInt, "40", "keep the K most likely tokens; 0 = off"},
       {"top-p", FlagKind::kDouble, "0.95", "nucleus: keep tokens up to this mass; 1 = off"},
       {"min-p", FlagKind::kDouble, "0.05", "drop tokens below P x the top one; 0 = off"},
       {"repeat-penalty", FlagKind::kDouble, "1.0", "penalty for recent tokens; 1 = off"},
       {"presence-penalty", FlagKind::kDouble, "0", "subtracted from recent tokens' logits"},
       {"repeat-last-n", FlagKind::kInt, "64", "how many recent tokens the penalties see"},
       {"seed", FlagKind::kInt, "-1", "random seed; -1 = random (printed on stderr)"},
       {"stop", FlagKind::kString, "", "stop before this text"},
       {"threads", FlagKind::kInt, "0", "CPU threads; 0 = one per core"},
       {"ctx-size", FlagKind::kInt, "0", "KV cache cells; 0 = the model's context length"},
       {"batch", FlagKind::kInt, "512", "prompt tokens per prefill step"},
       {"ids", FlagKind::kBool, "false", "print generated token ids instead of text"},
       {"ignore-eos", FlagKind::kBool, "false",
        "do not stop at EOS/BOS: always generate --max-tokens tokens"},
       {"dump-logits", FlagKind::kString, "",
        "write the logits of every position (prompt and fed-back tokens) to FILE as "
        "float32 (n, vocab); for tests"},
       {"kv-dtype", FlagKind::kString, "f32", "element type of the KV cache: f32, f16, bf16"},
       {"db", FlagKind::kString, "", "session store directory (with --session)"},
       {"session", FlagKind::kString, "", "persistent session id to append this turn to"},
       {"then", FlagKind::kString, "",
        "with --session: a second turn's text, run in the same process after the first"},
       {"round-tokens", FlagKind::kInt, "256",
        "sirllm without --session: a score-decay round every R generated tokens (a "
        "session's round is one turn)"}};
  AddPolicyFlags(&specs, "full");
  AddBackendFlags(&specs);
  FlagSet flags("generate", kSynopsis, std::move(specs));
  if (int rc = ParseOrExit(flags, args); rc >= 0) return rc;
  if (int rc = CheckBackendFlag(flags, "generate"); rc >= 0) return rc;
  if (!flags.Has("model")) {
    std::cerr << "sinkserve generate: --model is required\n";
    return kExitUsage;
  }
  if (flags.Has("prompt") && flags.Has("prompt-ids")) {
    std::cerr << "sinkserve generate: give --prompt or --prompt-ids, not both\n";
    return kExitUsage;
  }
  const int64_t max_tokens = flags.GetInt("max-tokens");
  const int64_t threads = flags.GetInt("threads");
  if (max_tokens < 0 || threads < 0 || flags.GetInt("batch") <= 0 ||
      flags.GetInt("ctx-size") < 0 || flags.GetInt("round-tokens") <= 0) {
    std::cerr << "sinkserve generate: --max-tokens, --threads, --ctx-size must be >= 0 "
                 "and --batch, --round-tokens > 0\n";
    return kExitUsage;
  }

  if (flags.Has("db") != flags.Has("session")) {
    std::cerr << "sinkserve generate: --db and --session go together\n";
    return kExitUsage;
  }
  if (flags.Has("round-tokens") && flags.Has("session")) {
    std::cerr << "sinkserve generate: --round-tokens is for one-shot runs; a session's "
                 "round is one turn\n";
    return kExitUsage;
  }
  if (flags.Has("then") && !flags.Has("session")) {
    std::cerr << "sinkserve generate: --then needs --db and --session\n";
    return kExitUsage;
  }
  auto kv_dtype = engine::ParseKvDtype(flags.GetString("kv-dtype"));
  if (!kv_dtype.ok()) {
    std::cerr << "sinkserve generate: --kv-dtype: " << kv_dtype.status().message() << "\n";
    return kExitUsage;
  }

  auto weights = engine::ModelWeights::Load(flags.GetString("model"));
  if (!weights.ok()) return Fail("generate", weights.status());
  auto tokenizer = engine::Tokenizer::FromGguf((*weights)->file());
  if (!tokenizer.ok()) return Fail("generate", tokenizer.status());
  const engine::Vocab& vocab = (*tokenizer)->vocab();
  if (flags.Has("session")) return GenerateInSession(flags, *weights, **tokenizer);

  std::vector<int32_t> prompt;
  const std::string text = flags.GetString("prompt");
  if (flags.Has("prompt-ids")) {
    for (int64_t id : flags.GetIntList("prompt-ids")) prompt.push_back(id);
  } else {
    if (vocab.add_bos && vocab.bos_id >= 0) prompt.push_back(vocab.bos_id);
    if (!text.empty()) {
      auto ids = (*tokenizer)->Encode(text, {});
      if (!ids.ok()) return Fail("generate", ids.status());
      prompt.insert(prompt.end(), ids->begin(), ids->end());
    }
    // A model whose vocab does not ask for BOS still needs one token to start.
    if (prompt.empty() && vocab.bos_id >= 0) prompt.push_back(vocab.bos_id);
  }
  if (prompt.empty()) {
    return Fail("generate", absl::InvalidArgumentError("empty prompt and no BOS token"));
  }

  auto policy = PolicyFromFlags(flags);
  if (!policy.ok()) {
    std::cerr << "sinkserve generate: " << policy.status().message() << "\n";
    return kExitUsage;
  }
  engine::SequenceOptions seq_options;
  seq_options.policy = *policy;
  seq_options.max_step_tokens = flags.GetInt("batch");
  if (!policy->Budget().has_value()) {
    // `full`: room for the whole run, up to the context size.
    const engine::ModelConfig& config = (*weights)->config();
    int64_t context = flags.GetInt("ctx-size");
    if (context == 0) context = config.context_length > 0 ? config.context_length : 4096;
    seq_options.capacity =
        std::max<int64_t>(1, std::min<int64_t>(context, prompt.size() + max_tokens));
  } else if (flags.Has("ctx-size")) {
    seq_options.capacity = flags.GetInt("ctx-size");
  }

  auto backend = BackendFromFlags(flags, *weights, static_cast<int>(threads), *kv_dtype);
  if (!backend.ok()) return Fail("generate", backend.status());
  auto sequence = engine::Sequence::Create(backend->get(), seq_options);
  if (!sequence.ok()) return Fail("generate", sequence.status());

  // Checked before anything reaches stdout.
  if (!policy->Budget().has_value() &&
      static_cast<int64_t>(prompt.size()) > (*sequence)->cache().capacity()) {
    return Fail("generate", absl::InvalidArgumentError(absl::StrCat(
                                "prompt of ", prompt.size(), " tokens exceeds the cache of ",
                                (*sequence)->cache().capacity(), " cells (--ctx-size)")));
  }

  engine::SamplerOptions sampling = SamplingFromFlags(flags, engine::SamplerOptions{}, true);
  const int64_t seed = static_cast<int64_t>(sampling.seed);
  engine::Sampler sampler(sampling);

  const engine::GeneratorOptions options =
      GeneratorOptionsFromFlags(flags, static_cast<int>(flags.GetInt("batch")));
  const bool print_ids = flags.GetBool("ids");
  TurnOutput out;
  engine::GeneratorCallbacks callbacks = CallbacksFor(flags, &out);
  // One-shot runs have no turns: SirLLM's decay rounds are every R tokens.
  const int64_t round_tokens = flags.GetInt("round-tokens");
  int64_t sampled = 0;
  callbacks.on_token = [&](int32_t) {
    if (++sampled % round_tokens == 0) (*sequence)->EndRound();
    return true;
  };
  if (!print_ids) std::cout << text << std::flush;

  auto stats = engine::RunTurn(**sequence, **tokenizer, prompt, sampler, options, callbacks);
  if (!stats.ok()) return Fail("generate", stats.status());
  if (print_ids) {
    std::cout << absl::StrJoin(out.ids, " ") << "\n";
  } else {
    std::cout << "\n";
  }
  if (flags.Has("dump-logits")) {
    if (absl::Status s = WriteLogits(flags.GetString("dump-logits"), out.logits); !s.ok()) {
      return Fail("generate", s);
    }
  }
  std::cerr << absl::StrFormat(
      "prompt %d tokens in %.1f ms (%.1f tok/s); generated %d tokens in %.1f ms "
      "(%.1f tok/s); stop: %s; seed %d; cache %d cells, %d evicted\n",
      stats->prompt_tokens, stats->prompt_seconds * 1e3,
      PerSecond(stats->prompt_tokens, stats->prompt_seconds), stats->generated_tokens,
      stats->generate_seconds * 1e3, PerSecond(stats->generated_tokens, stats->generate_seconds),
      std::string(engine::StopReasonName(stats->stop)), seed, (*sequence)->cache().size(),
      (*sequence)->cache().evicted_total());
  return kExitOk;
}

namespace {

int GenerateInSession(const FlagSet& flags, std::shared_ptr<const engine::ModelWeights> weights,
                      const engine::Tokenizer& tokenizer) {
  const std::string id = flags.GetString("session");
  if (absl::Status s = memory::ValidateSessionId(id); !s.ok()) {
    std::cerr << "sinkserve generate: --session: " << s.message() << "\n";
    return kExitUsage;
  }
  auto policy = PolicyFromFlags(flags);
  if (!policy.ok()) {
    std::cerr << "sinkserve generate: " << policy.status().message() << "\n";
    return kExitUsage;
  }
  const std::string fingerprint = engine::ModelFingerprint(weights->file());
  auto store = memory::RocksDbSessionStore::Open(flags.GetString("db"));
  if (!store.ok()) return FailCode(store.status());
  auto loaded = (*store)->Load(id, fingerprint);
  if (!loaded.ok() && loaded.status().code() != absl::StatusCode::kNotFound) {
    return FailCode(loaded.status());
  }
  const bool exists = loaded.ok();

  engine::KvDtype dtype = *engine::ParseKvDtype(flags.GetString("kv-dtype"));
  if (exists) {
    const memory::SessionState& state = loaded->state;
    auto stored = engine::ParseKvDtype(state.kv_shape.dtype);
    if (!stored.ok()) return FailCode(stored.status());
    if (flags.Has("kv-dtype") && *stored != dtype) {
      std::cerr << "sinkserve generate: session " << id << " keeps its KV cache as "
                << state.kv_shape.dtype << "; --kv-dtype " << flags.GetString("kv-dtype")
                << " cannot change it\n";
      return kExitUsage;
    }
    dtype = *stored;
    const bool policy_given = flags.Has("policy") || flags.Has("sinks") ||
                              flags.Has("window") || flags.Has("entropy") ||
                              flags.Has("decay");
    if (policy_given && *policy != state.policy) {
      std::cerr << "sinkserve generate: session " << id << " was created with policy "
                << state.policy.ToString() << "; --policy " << policy->ToString()
                << " cannot change it (use a new session)\n";
      return kExitUsage;
    }
  }

  auto backend =
      BackendFromFlags(flags, weights, static_cast<int>(flags.GetInt("threads")), dtype);
  if (!backend.ok()) return FailCode(backend.status());

  std::unique_ptr<engine::Session> session;
  std::optional<engine::SamplerOptions> turn_sampling;
  if (exists) {
    auto restored = engine::Session::Restore(backend->get(), fingerprint,
                                             std::move(loaded->state), loaded->version);
    if (!restored.ok()) return FailCode(restored.status());
    session = *std::move(restored);
    if (AnySamplingFlag(flags)) {
      turn_sampling = SamplingFromFlags(flags, session->config().sampling, false);
    }
  } else {
    engine::SessionConfig config;
    config.policy = *policy;
    config.sampling = SamplingFromFlags(flags, engine::SamplerOptions{}, true);
    config.max_step_tokens = static_cast<int>(flags.GetInt("batch"));
    int64_t capacity = flags.GetInt("ctx-size");
    if (capacity == 0 && !policy->Budget().has_value()) {
      const int64_t context = weights->config().context_length;
      capacity = context > 0 ? context : 4096;
    }
    config.capacity = static_cast<int>(capacity);
    auto created = engine::Session::Create(id, backend->get(), fingerprint, config);
    if (!created.ok()) return FailCode(created.status());
    session = *std::move(created);
    std::cerr << "session " << id << ": created, policy " << policy->ToString() << ", seed "
              << config.sampling.seed << "\n";
  }

  const engine::GeneratorOptions options =
      GeneratorOptionsFromFlags(flags, session->config().max_step_tokens);
  const bool print_ids = flags.GetBool("ids");
  TurnOutput out;
  const engine::GeneratorCallbacks callbacks = CallbacksFor(flags, &out);

  std::vector<std::string> texts = {flags.GetString("prompt")};
  if (flags.Has("then")) texts.push_back(flags.GetString("then"));
  const engine::Vocab& vocab = tokenizer.vocab();
  for (size_t turn = 0; turn < texts.size(); ++turn) {
    // A session's text starts with BOS once; later turns continue it.
    const bool first = session->sequence().cache().tokens_seen() == 0 &&
                       session->sequence().pending().empty();
    std::vector<int32_t> prompt;
    if (turn == 0 && flags.Has("prompt-ids")) {
      for (int64_t t : flags.GetIntList("prompt-ids")) prompt.push_back(static_cast<int32_t>(t));
    } else {
      if (first && vocab.bos_id >= 0) prompt.push_back(vocab.bos_id);
      if (!texts[turn].empty()) {
        auto ids = tokenizer.Encode(texts[turn], {});
        if (!ids.ok()) return FailCode(ids.status());
        prompt.insert(prompt.end(), ids->begin(), ids->end());
      }
    }
    if (!print_ids) std::cout << texts[turn] << std::flush;
    out.ids.clear();
    auto stats = session->Turn(tokenizer, prompt, options, callbacks, turn_sampling);
    if (!stats.ok()) return FailCode(stats.status());
    if (print_ids) {
      std::cout << absl::StrJoin(out.ids, " ") << "\n";
    } else {
      std::cout << "\n";
    }
    auto checkpoint = session->Checkpoint(store->get());
    if (!checkpoint.ok()) return FailCode(checkpoint.status());
    std::cerr << absl::StrFormat(
        "session %s: turn %d, %d prompt + %d generated tokens (stop: %s); cache %d cells, "
        "%d evicted; checkpoint v%d, %s, %d bytes in %.2f ms\n",
        id, session->turns(), stats->prompt_tokens, stats->generated_tokens,
        std::string(engine::StopReasonName(stats->stop)), session->sequence().cache().size(),
        session->sequence().cache().evicted_total(), checkpoint->version,
        checkpoint->full ? "full" : "delta", checkpoint->bytes_written,
        absl::ToDoubleMilliseconds(checkpoint->latency));
  }
  if (flags.Has("dump-logits")) {
    if (absl::Status s = WriteLogits(flags.GetString("dump-logits"), out.logits); !s.ok()) {
      return FailCode(s);
    }
  }
  // The checkpoints are durable already (WAL); writing the memtables out
  // spares the next process a log replay.
  if (absl::Status s = (*store)->Flush(); !s.ok()) {
    std::cerr << "sinkserve generate: warning: " << s.message() << "\n";
  }
  return kExitOk;
}

}  // namespace
}  // namespace sinkserve::cli
