#include "engine/tokenizer/vocab.h"

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "memory/status_macros.h"

namespace sinkserve::engine {
namespace {

// llama.cpp's per-model token attributes (llama-vocab.cpp, "set attributes
// by model/tokenizer name"): Phi-3's special tokens eat the whitespace after
// them, so "</s> <" encodes as </s>, "▁<" there, not </s>, "▁", "▁<".
void SetStripAttributes(std::string_view general_name, Vocab* vocab) {
  const std::string name = absl::AsciiStrToLower(
      absl::string_view(general_name.data(), general_name.size()));
  if (!absl::StrContains(name, "phi-3") && !absl::StrContains(name, "phi3")) return;
  for (int32_t id = 0; id < static_cast<int32_t>(vocab->tokens.size()); ++id) {
    const TokenType type = vocab->type(id);
    const std::string& text = vocab->tokens[id];
    const bool special = type == TokenType::kControl || type == TokenType::kUserDefined ||
                         type == TokenType::kUnknown;
    if ((special || text == "</s>") && text != "<unk>" && text != "<s>" &&
        text != "<|endoftext|>") {
      vocab->rstrip_ids.push_back(id);
    }
  }
}


// Debian's Abseil has its own string_view, which StrCat does not take from
// std::string_view; error paths copy instead.
constexpr char kModelKey[] = "tokenizer.ggml.model";

// A missing optional key is fine; a present key of the wrong kind is not.
template <typename T>
absl::Status ReadOptional(absl::StatusOr<T> value, T* out) {
  if (value.ok()) {
    *out = *std::move(value);
    return absl::OkStatus();
  }
  if (absl::IsNotFound(value.status())) return absl::OkStatus();
  return value.status();
}

// Special ids: converters write "none" as -1, and some as uint32 0xFFFFFFFF
// (stories260K does), so both mean absent. Anything else must be a token.
absl::Status ReadSpecialId(const GgufFile& file, std::string_view key,
                           size_t n_tokens, int32_t* id) {
  if (file.Find(key) == nullptr) return absl::OkStatus();
  SINKSERVE_ASSIGN_OR_RETURN(const int64_t value, file.GetInt(key));
  if (value < 0 || value == 0xFFFFFFFFll) {
    *id = -1;
    return absl::OkStatus();
  }
  if (static_cast<uint64_t>(value) >= n_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(key), " = ", value,
                     " is out of range for a vocab of ", n_tokens, " tokens"));
  }
  *id = static_cast<int32_t>(value);
  return absl::OkStatus();
}

// llama.cpp turns on BOS for these BPE pre-tokenizers even when the file
// does not say so (llm_load_vocab); an explicit add_bos_token still wins.
bool PreAddsBos(std::string_view pre) {
  return pre == "llama3" || pre == "llama-v3" || pre == "llama-bpe" ||
         pre == "falcon3" || pre == "tekken" || pre == "chameleon";
}

}  // namespace

absl::Status Vocab::Validate() const {
  if (tokens.empty()) return absl::InvalidArgumentError("vocab has no tokens");
  if (tokens.size() > static_cast<size_t>(INT32_MAX)) {
    return absl::InvalidArgumentError("vocab has more than 2^31 tokens");
  }
  if (!scores.empty() && scores.size() != tokens.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "vocab has ", tokens.size(), " tokens but ", scores.size(), " scores"));
  }
  if (!types.empty() && types.size() != tokens.size()) {
    return absl::InvalidArgumentError(absl::StrCat("vocab has ", tokens.size(),
                                                   " tokens but ", types.size(),
                                                   " token types"));
  }
  for (size_t i = 0; i < types.size(); ++i) {
    const auto t = static_cast<int32_t>(types[i]);
    if (t < 0 || t > static_cast<int32_t>(TokenType::kByte)) {
      return absl::InvalidArgumentError(
          absl::StrCat("token ", i, " has unknown token type ", t));
    }
  }
  for (const std::vector<int32_t>* strip : {&lstrip_ids, &rstrip_ids}) {
    for (size_t i = 0; i < strip->size(); ++i) {
      const int32_t id = (*strip)[i];
      if (id < 0 || static_cast<size_t>(id) >= tokens.size() ||
          (i > 0 && id <= (*strip)[i - 1])) {
        return absl::InvalidArgumentError(absl::StrCat(
            "whitespace-stripping token ids must ascend within the vocab; got ", id));
      }
    }
  }
  const std::pair<const char*, int32_t> ids[] = {
      {"bos", bos_id}, {"eos", eos_id}, {"unk", unk_id}, {"pad", pad_id}};
  for (const auto& [name, id] : ids) {
    if (id < -1 || (id >= 0 && static_cast<size_t>(id) >= tokens.size())) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " id ", id, " is out of range for a vocab of ",
                       tokens.size(), " tokens"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Vocab> Vocab::FromGguf(const GgufFile& file) {
  Vocab vocab;
  if (file.Find(kModelKey) == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("GGUF has no ", kModelKey, " (no tokenizer)"));
  }
  SINKSERVE_ASSIGN_OR_RETURN(const std::string_view model,
                             file.GetString(kModelKey));
  if (model == "llama") {
    vocab.model = TokenizerModel::kSpm;
  } else if (model == "gpt2") {
    vocab.model = TokenizerModel::kBpe;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported ", kModelKey, " \"", std::string(model),
                     "\"; supported: \"llama\" (SentencePiece), \"gpt2\" "
                     "(byte-level BPE)"));
  }

  std::string_view pre = "default";
  SINKSERVE_RETURN_IF_ERROR(
      ReadOptional(file.GetString("tokenizer.ggml.pre"), &pre));
  vocab.pre = std::string(pre);

  if (file.Find("tokenizer.ggml.tokens") == nullptr) {
    return absl::InvalidArgumentError(
        "GGUF has a tokenizer.ggml.model but no tokenizer.ggml.tokens");
  }
  SINKSERVE_ASSIGN_OR_RETURN(const std::vector<std::string_view> tokens,
                             file.GetStringArray("tokenizer.ggml.tokens"));
  vocab.tokens.assign(tokens.begin(), tokens.end());
  SINKSERVE_RETURN_IF_ERROR(
      ReadOptional(file.GetFloatArray("tokenizer.ggml.scores"), &vocab.scores));

  std::vector<int64_t> types;
  SINKSERVE_RETURN_IF_ERROR(
      ReadOptional(file.GetIntArray("tokenizer.ggml.token_type"), &types));
  if (types.empty()) {
    vocab.types.assign(vocab.tokens.size(), TokenType::kNormal);
  } else {
    vocab.types.reserve(types.size());
    for (size_t i = 0; i < types.size(); ++i) {
      if (types[i] < 0 || types[i] > static_cast<int64_t>(TokenType::kByte)) {
        return absl::InvalidArgumentError(
            absl::StrCat("tokenizer.ggml.token_type[", i, "] = ", types[i],
                         " is not a token type (0..6)"));
      }
      vocab.types.push_back(static_cast<TokenType>(types[i]));
    }
  }

  if (vocab.model == TokenizerModel::kBpe) {
    if (file.Find("tokenizer.ggml.merges") == nullptr) {
      return absl::InvalidArgumentError(
          "gpt2 tokenizer without tokenizer.ggml.merges");
    }
    SINKSERVE_ASSIGN_OR_RETURN(const std::vector<std::string_view> merges,
                               file.GetStringArray("tokenizer.ggml.merges"));
    vocab.merges.assign(merges.begin(), merges.end());
  }

  // llama.cpp's defaults (llm_load_vocab), used when the file is silent. A
  // default id that the vocab is too small for means "none".
  const size_t n = vocab.tokens.size();
  auto default_id = [n](int32_t id) {
    return static_cast<size_t>(id) < n ? id : -1;
  };
  if (vocab.model == TokenizerModel::kSpm) {
    vocab.bos_id = default_id(1);
    vocab.eos_id = default_id(2);
    vocab.unk_id = default_id(0);
    vocab.add_bos = true;
    vocab.add_space_prefix = true;
  } else {
    vocab.bos_id = default_id(11);
    vocab.eos_id = default_id(11);
    vocab.add_bos = PreAddsBos(vocab.pre);
    vocab.add_space_prefix = false;
  }
  SINKSERVE_RETURN_IF_ERROR(
      ReadSpecialId(file, "tokenizer.ggml.bos_token_id", n, &vocab.bos_id));
  SINKSERVE_RETURN_IF_ERROR(
      ReadSpecialId(file, "tokenizer.ggml.eos_token_id", n, &vocab.eos_id));
  SINKSERVE_RETURN_IF_ERROR(
      ReadSpecialId(file, "tokenizer.ggml.unknown_token_id", n, &vocab.unk_id));
  SINKSERVE_RETURN_IF_ERROR(
      ReadSpecialId(file, "tokenizer.ggml.padding_token_id", n, &vocab.pad_id));

  SINKSERVE_RETURN_IF_ERROR(ReadOptional(
      file.GetBool("tokenizer.ggml.add_bos_token"), &vocab.add_bos));
  SINKSERVE_RETURN_IF_ERROR(ReadOptional(
      file.GetBool("tokenizer.ggml.add_eos_token"), &vocab.add_eos));
  SINKSERVE_RETURN_IF_ERROR(
      ReadOptional(file.GetBool("tokenizer.ggml.add_space_prefix"),
                   &vocab.add_space_prefix));

  std::string_view chat_template;
  SINKSERVE_RETURN_IF_ERROR(
      ReadOptional(file.GetString("tokenizer.chat_template"), &chat_template));
  vocab.chat_template = std::string(chat_template);

  std::string_view name;
  SINKSERVE_RETURN_IF_ERROR(ReadOptional(file.GetString("general.name"), &name));
  SetStripAttributes(name, &vocab);

  SINKSERVE_RETURN_IF_ERROR(vocab.Validate());
  return vocab;
}

}  // namespace sinkserve::engine
