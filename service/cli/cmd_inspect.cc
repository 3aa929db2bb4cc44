// `sinkserve inspect`: what a GGUF model is, in a screenful.
#include <cstdio>
#include <iostream>
#include <map>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/gguf/gguf.h"
#include "engine/gguf/model_config.h"
#include "engine/tokenizer/tokenizer.h"
#include "service/cli/commands.h"

namespace sinkserve::cli {
namespace {

const char* RopeStyleName(engine::RopeStyle style) {
  return style == engine::RopeStyle::kNeox ? "neox (rotate half)" : "adjacent pairs";
}

}  // namespace

int RunInspect(const std::vector<std::string>& args) {
  FlagSet flags("inspect", "--model PATH",
                {{"model", FlagKind::kString, "", "GGUF model file"}});
  if (int rc = ParseOrExit(flags, args); rc >= 0) return rc;
  if (!flags.Has("model")) {
    std::cerr << "sinkserve inspect: --model is required\n";
    return kExitUsage;
  }
  const std::string path = flags.GetString("model");
  auto file = engine::GgufFile::Open(path);
  if (!file.ok()) return Fail("inspect", file.status());
  const engine::GgufFile& gguf = **file;

  absl::PrintF("file          %s (GGUF v%d, %d bytes, %d metadata keys, alignment %d)\n",
               path, gguf.version(), gguf.file_size(), gguf.metadata().size(),
               gguf.alignment());
  auto config = engine::ModelConfig::FromGguf(gguf);
  if (config.ok()) {
    const engine::ModelConfig& c = *config;
    absl::PrintF("architecture  %s%s\n", c.architecture,
                 c.name.empty() ? "" : absl::StrCat(" (", c.name, ")"));
    absl::PrintF("shape         dim %d, layers %d, heads %d, kv heads %d, head dim %d, ffn %d\n",
                 c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim);
    absl::PrintF("vocab         %d tokens, context %d\n", c.vocab_size, c.context_length);
    absl::PrintF("rope          base %g, linear scale %g, %s\n", c.rope_freq_base,
                 c.rope_scale, RopeStyleName(c.rope_style));
    absl::PrintF("norm          rms eps %g\n", c.rms_eps);
    absl::PrintF("output        %s%s\n", c.tied_output ? "tied to token_embd" : "untied",
                 c.qkv_bias ? ", q/k/v biases" : "");
  } else {
    absl::PrintF("architecture  not loadable: %s\n", config.status().message());
  }

  auto vocab = engine::Vocab::FromGguf(gguf);
  if (vocab.ok()) {
    absl::PrintF("tokenizer     %s (pre %s), %d tokens, %d merges, bos %d, eos %d, unk %d%s%s\n",
                 vocab->model == engine::TokenizerModel::kSpm ? "llama (SentencePiece)"
                                                              : "gpt2 (byte-level BPE)",
                 vocab->pre, vocab->tokens.size(), vocab->merges.size(), vocab->bos_id,
                 vocab->eos_id, vocab->unk_id, vocab->add_bos ? ", adds BOS" : "",
                 vocab->chat_template.empty() ? "" : ", has chat template");
  } else {
    absl::PrintF("tokenizer     none: %s\n", vocab.status().message());
  }

  // Tensor summary: count and bytes per type, then the first few tensors.
  std::map<std::string, std::pair<int64_t, uint64_t>> by_type;
  uint64_t total = 0;
  for (const engine::GgufTensorInfo& t : gguf.tensors()) {
    auto& entry = by_type[std::string(t.type->name)];
    entry.first++;
    entry.second += t.size_bytes;
    total += t.size_bytes;
  }
  absl::PrintF("tensors       %d, %.2f MiB\n", gguf.tensors().size(), total / 1048576.0);
  for (const auto& [type, entry] : by_type) {
    absl::PrintF("  %-6s      %d tensors, %.2f MiB\n", type, entry.first, entry.second / 1048576.0);
  }
  constexpr size_t kShown = 12;
  for (size_t i = 0; i < gguf.tensors().size() && i < kShown; ++i) {
    const engine::GgufTensorInfo& t = gguf.tensors()[i];
    absl::PrintF("  %-32s %-5s [%s]\n", t.name, t.type->name, absl::StrJoin(t.shape, ", "));
  }
  if (gguf.tensors().size() > kShown) {
    absl::PrintF("  ... %d more\n", gguf.tensors().size() - kShown);
  }
  return kExitOk;
}

}  // namespace sinkserve::cli
