// `sinkserve generate`: continues a prompt on the CPU backend, streaming text.
#include <algorithm>
#include <fstream>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/cpu_backend.h"
#include "engine/generator.h"
#include "engine/model_weights.h"
#include "engine/sampler.h"
#include "engine/sequence.h"
#include "engine/tokenizer.h"
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
    "KV cache never outgrows its budget, so generation can go on indefinitely.";

double PerSecond(int n, double seconds) { return seconds > 0 ? n / seconds : 0.0; }

absl::Status WriteLogits(const std::string& path, const std::vector<float>& logits) {
  std::ofstream out(path, std::ios::binary);
  // float32 little-endian (n, vocab); every platform sinkserve targets is LE.
  out.write(reinterpret_cast<const char*>(logits.data()), logits.size() * sizeof(float));
  if (!out) return absl::UnavailableError("cannot write " + path);
  return absl::OkStatus();
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
        "float32 (n, vocab); for tests"}};
  AddPolicyFlags(&specs, "full");
  FlagSet flags("generate", kSynopsis, std::move(specs));
  if (int rc = ParseOrExit(flags, args); rc >= 0) return rc;
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
      flags.GetInt("ctx-size") < 0) {
    std::cerr << "sinkserve generate: --max-tokens, --threads, --ctx-size must be >= 0 "
                 "and --batch > 0\n";
    return kExitUsage;
  }

  auto weights = engine::ModelWeights::Load(flags.GetString("model"));
  if (!weights.ok()) return Fail("generate", weights.status());
  auto tokenizer = engine::Tokenizer::FromGguf((*weights)->file());
  if (!tokenizer.ok()) return Fail("generate", tokenizer.status());
  const engine::Vocab& vocab = (*tokenizer)->vocab();

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

  auto backend = engine::NewCpuBackend(*weights, {static_cast<int>(threads)});
  if (!backend.ok()) return Fail("generate", backend.status());
  auto sequence = engine::Sequence::Create(backend->get(), seq_options);
  if (!sequence.ok()) return Fail("generate", sequence.status());

  engine::SamplerOptions sampling;
  sampling.temperature = flags.GetDouble("temperature");
  sampling.top_k = flags.GetInt("top-k");
  sampling.top_p = flags.GetDouble("top-p");
  sampling.min_p = flags.GetDouble("min-p");
  sampling.repeat_penalty = flags.GetDouble("repeat-penalty");
  sampling.presence_penalty = flags.GetDouble("presence-penalty");
  sampling.penalty_last_n = flags.GetInt("repeat-last-n");
  int64_t seed = flags.GetInt("seed");
  if (seed < 0) seed = std::random_device()() & 0x7fffffff;
  sampling.seed = seed;
  engine::Sampler sampler(sampling);

  engine::GeneratorOptions options;
  options.max_tokens = max_tokens;
  options.prefill_chunk = flags.GetInt("batch");
  if (!flags.GetString("stop").empty()) options.stop_strings.push_back(flags.GetString("stop"));
  options.stop_at_end_of_text = !flags.GetBool("ignore-eos");

  const bool print_ids = flags.GetBool("ids");
  std::vector<int32_t> generated;
  std::vector<float> dumped;  // (n, vocab)
  engine::GeneratorCallbacks callbacks;
  callbacks.on_token = [&](int32_t id) {
    generated.push_back(id);
    return true;
  };
  if (!print_ids) {
    std::cout << text << std::flush;
    callbacks.on_text = [](std::string_view piece) {
      std::cout << piece << std::flush;
    };
  }
  if (flags.Has("dump-logits")) {
    callbacks.on_logits = [&](absl::Span<const float> logits, int64_t) {
      dumped.insert(dumped.end(), logits.begin(), logits.end());
    };
  }

  if (!policy->Budget().has_value() &&
      static_cast<int64_t>(prompt.size()) > (*sequence)->cache().capacity()) {
    return Fail("generate", absl::InvalidArgumentError(absl::StrCat(
                                "prompt of ", prompt.size(), " tokens exceeds the cache of ",
                                (*sequence)->cache().capacity(), " cells (--ctx-size)")));
  }
  auto stats = engine::RunTurn(**sequence, **tokenizer, prompt, sampler, options, callbacks);
  if (!stats.ok()) return Fail("generate", stats.status());
  if (print_ids) {
    std::cout << absl::StrJoin(generated, " ") << "\n";
  } else {
    std::cout << "\n";
  }
  if (flags.Has("dump-logits")) {
    if (absl::Status s = WriteLogits(flags.GetString("dump-logits"), dumped); !s.ok()) {
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

}  // namespace sinkserve::cli
