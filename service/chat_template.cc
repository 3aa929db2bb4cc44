#include "service/chat_template.h"

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace sinkserve::service {
namespace {

absl::string_view AbslView(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

std::string_view StdView(absl::string_view s) {
  return std::string_view(s.data(), s.size());
}

bool Contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

// Llama 2 and 3's reference templates strip each message (Python .strip(),
// Jinja |trim); the others insert it untouched.
absl::string_view Trim(absl::string_view s) {
  return absl::StripAsciiWhitespace(s);
}

struct FamilyTokens {
  const char* bos;
  const char* eos;
};

// The usual BOS/EOS texts of each family, for models whose vocab lacks them.
FamilyTokens DefaultTokens(ChatFamily family) {
  switch (family) {
    case ChatFamily::kLlama2:
    case ChatFamily::kMistral:
    case ChatFamily::kZephyr:
      return {"<s>", "</s>"};
    case ChatFamily::kLlama3:
      return {"<|begin_of_text|>", "<|end_of_text|>"};
    case ChatFamily::kChatMl:  // Qwen and friends have no BOS
    case ChatFamily::kRaw:
      return {"", ""};
  }
  return {"", ""};
}

constexpr char kLlama3Eot[] = "<|eot_id|>";
constexpr char kImEnd[] = "<|im_end|>";

std::string Llama3Header(absl::string_view role) {
  return absl::StrCat("<|start_header_id|>", role, "<|end_header_id|>\n\n");
}

}  // namespace

std::string_view ChatFamilyName(ChatFamily family) {
  switch (family) {
    case ChatFamily::kRaw:
      return "raw";
    case ChatFamily::kLlama2:
      return "llama2";
    case ChatFamily::kLlama3:
      return "llama3";
    case ChatFamily::kChatMl:
      return "chatml";
    case ChatFamily::kMistral:
      return "mistral";
    case ChatFamily::kZephyr:
      return "zephyr";
  }
  return "raw";
}

absl::StatusOr<ChatFamily> ParseChatFamily(std::string_view name) {
  const std::string lower = absl::AsciiStrToLower(AbslView(name));
  for (ChatFamily family :
       {ChatFamily::kRaw, ChatFamily::kLlama2, ChatFamily::kLlama3,
        ChatFamily::kChatMl, ChatFamily::kMistral, ChatFamily::kZephyr}) {
    if (lower == ChatFamilyName(family)) return family;
  }
  if (lower == "llama-2") return ChatFamily::kLlama2;
  if (lower == "llama-3") return ChatFamily::kLlama3;
  if (lower == "im_start") return ChatFamily::kChatMl;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown chat template \"", AbslView(name),
      "\"; expected one of raw, llama2, llama3, chatml, mistral, zephyr "
      "(or empty for the model's own)"));
}

ChatFamilyGuess DetectChatFamily(std::string_view jinja) {
  if (Trim(AbslView(jinja)).empty()) return {ChatFamily::kRaw, ""};
  // Order matters only where markers overlap: Llama 2 and Mistral share
  // [INST]; Phi-3 shares <|user|>/<|assistant|> with Zephyr but ends turns
  // with <|end|> instead of EOS.
  if (Contains(jinja, "<|start_header_id|>")) return {ChatFamily::kLlama3, ""};
  if (Contains(jinja, "<|im_start|>")) return {ChatFamily::kChatMl, ""};
  if (Contains(jinja, "[INST]")) {
    if (Contains(jinja, "<<SYS>>")) return {ChatFamily::kLlama2, ""};
    if (Contains(jinja, "[SYSTEM_PROMPT]")) {
      return {ChatFamily::kMistral,
              "chat template uses Mistral's [SYSTEM_PROMPT] format; "
              "approximating it with the mistral template"};
    }
    return {ChatFamily::kMistral, ""};
  }
  if (Contains(jinja, "<|user|>") && Contains(jinja, "<|assistant|>") &&
      !Contains(jinja, "<|end|>")) {
    return {ChatFamily::kZephyr, ""};
  }
  return {ChatFamily::kRaw,
          "unrecognised chat template in the model; using raw (no template), "
          "set chat_template to one of llama2, llama3, chatml, mistral, "
          "zephyr to override"};
}

ModelChatInfo ModelChatInfoFromVocab(const engine::Vocab& vocab) {
  ModelChatInfo info;
  info.chat_template = vocab.chat_template;
  const auto text = [&](int32_t id) -> std::string {
    if (id < 0 || static_cast<size_t>(id) >= vocab.tokens.size()) return "";
    return vocab.tokens[id];
  };
  info.bos_text = text(vocab.bos_id);
  info.eos_text = text(vocab.eos_id);
  info.add_bos = vocab.add_bos;
  return info;
}

absl::StatusOr<ChatTemplateSelection> SelectChatTemplate(
    std::string_view requested, const ModelChatInfo& model) {
  ChatTemplateSelection selection;
  ChatTemplate& t = selection.chat_template;
  if (Trim(AbslView(requested)).empty()) {
    ChatFamilyGuess guess = DetectChatFamily(model.chat_template);
    t.family = guess.family;
    selection.warning = std::move(guess.warning);
  } else {
    absl::StatusOr<ChatFamily> family = ParseChatFamily(StdView(Trim(AbslView(requested))));
    if (!family.ok()) return family.status();
    t.family = *family;
  }
  const FamilyTokens defaults = DefaultTokens(t.family);
  t.bos_text = model.bos_text.empty() ? defaults.bos : model.bos_text;
  t.eos_text = model.eos_text.empty() ? defaults.eos : model.eos_text;
  return selection;
}

std::string EndOfAssistant(const ChatTemplate& t) {
  switch (t.family) {
    case ChatFamily::kRaw:
      return "";
    case ChatFamily::kLlama2:
    case ChatFamily::kMistral:
      return t.eos_text;
    case ChatFamily::kLlama3:
      return kLlama3Eot;
    case ChatFamily::kChatMl:
      return absl::StrCat(kImEnd, "\n");
    case ChatFamily::kZephyr:
      return absl::StrCat(t.eos_text, "\n");
  }
  return "";
}

std::vector<std::string> StopTexts(const ChatTemplate& t) {
  std::vector<std::string> stops;
  if (t.family == ChatFamily::kLlama3) stops.push_back(kLlama3Eot);
  if (t.family == ChatFamily::kChatMl) stops.push_back(kImEnd);
  if (!t.eos_text.empty() &&
      (stops.empty() || stops.front() != t.eos_text)) {
    stops.push_back(t.eos_text);
  }
  return stops;
}

namespace {

// Appends to a turn's pieces, joining a stretch to the previous one of its
// kind so that a special token's text never straddles two pieces.
class PieceBuilder {
 public:
  void Markup(absl::string_view text) { Add(text, true); }
  void Content(absl::string_view text) { Add(text, false); }
  std::vector<TurnPiece> Take() { return std::move(pieces_); }

 private:
  void Add(absl::string_view text, bool markup) {
    if (text.empty()) return;
    if (pieces_.empty() || pieces_.back().markup != markup) {
      pieces_.push_back({std::string(), markup});
    }
    pieces_.back().text.append(text.data(), text.size());
  }

  std::vector<TurnPiece> pieces_;
};

}  // namespace

std::vector<TurnPiece> FormatTurnPieces(const ChatTemplate& t,
                                        const TurnContext& turn) {
  const absl::string_view user = AbslView(turn.user_text);
  const absl::string_view system = AbslView(turn.system_prompt);
  const bool first = turn.first_turn;
  PieceBuilder out;
  if (first) {
    if (turn.add_bos) out.Markup(t.bos_text);
  } else if (turn.after_assistant) {
    out.Markup(EndOfAssistant(t));
  }
  switch (t.family) {
    case ChatFamily::kRaw:
      if (first) out.Content(system);
      if (turn.system_only) break;
      out.Content(user);
      break;
    case ChatFamily::kLlama2:
      // Every [INST] opens with BOS; on the first turn that is `add_bos`'s.
      if (!first) out.Markup(t.bos_text);
      out.Markup("[INST] ");
      if (first && !Trim(system).empty()) {
        out.Markup("<<SYS>>\n");
        out.Content(Trim(system));
        out.Markup("\n<</SYS>>\n\n");
      }
      if (turn.system_only) break;
      out.Content(Trim(user));
      out.Markup(" [/INST]");
      break;
    case ChatFamily::kLlama3:
      if (first && !Trim(system).empty()) {
        out.Markup(Llama3Header("system"));
        out.Content(Trim(system));
        out.Markup(kLlama3Eot);
      }
      if (turn.system_only) break;
      out.Markup(Llama3Header("user"));
      out.Content(Trim(user));
      out.Markup(absl::StrCat(kLlama3Eot, Llama3Header("assistant")));
      break;
    case ChatFamily::kChatMl:
      if (first && !system.empty()) {
        out.Markup("<|im_start|>system\n");
        out.Content(system);
        out.Markup(absl::StrCat(kImEnd, "\n"));
      }
      if (turn.system_only) break;
      out.Markup("<|im_start|>user\n");
      out.Content(user);
      out.Markup(absl::StrCat(kImEnd, "\n<|im_start|>assistant\n"));
      break;
    case ChatFamily::kMistral:
      out.Markup("[INST] ");
      if (first && !system.empty()) {
        out.Content(system);
        out.Markup("\n\n");
      }
      if (turn.system_only) break;
      out.Content(user);
      out.Markup(" [/INST]");
      break;
    case ChatFamily::kZephyr:
      if (first && !system.empty()) {
        out.Markup("<|system|>\n");
        out.Content(system);
        out.Markup(absl::StrCat(t.eos_text, "\n"));
      }
      if (turn.system_only) break;
      out.Markup("<|user|>\n");
      out.Content(user);
      out.Markup(absl::StrCat(t.eos_text, "\n<|assistant|>\n"));
      break;
  }
  return out.Take();
}

std::string FormatTurn(const ChatTemplate& t, const TurnContext& turn) {
  std::string out;
  for (const TurnPiece& piece : FormatTurnPieces(t, turn)) out += piece.text;
  return out;
}

TurnEncoder::TurnEncoder(const engine::Tokenizer& tokenizer)
    : tokenizer_(tokenizer), splitter_(tokenizer.vocab()) {}

absl::StatusOr<std::vector<int32_t>> TurnEncoder::Encode(
    absl::Span<const TurnPiece> pieces) const {
  // Plain text between special tokens is gathered across pieces and encoded
  // in one call: both tokenizers treat a text fragment as a unit (BPE merges
  // inside it, SentencePiece adds its dummy prefix at its start, i.e. after
  // each special token), so the ids match those of the joined string.
  engine::EncodeOptions plain;  // no BOS, no special parsing
  std::vector<int32_t> ids;
  std::string run;
  const auto flush = [&]() -> absl::Status {
    if (run.empty()) return absl::OkStatus();
    absl::StatusOr<std::vector<int32_t>> run_ids =
        tokenizer_.Encode(run, plain);
    if (!run_ids.ok()) return run_ids.status();
    ids.insert(ids.end(), run_ids->begin(), run_ids->end());
    run.clear();
    return absl::OkStatus();
  };
  for (const TurnPiece& piece : pieces) {
    if (!piece.markup) {
      run += piece.text;
      continue;
    }
    for (const engine::TextFragment& fragment :
         splitter_.Split(piece.text, /*parse_special=*/true)) {
      if (fragment.token < 0) {
        run.append(fragment.text.data(), fragment.text.size());
        continue;
      }
      if (absl::Status s = flush(); !s.ok()) return s;
      ids.push_back(fragment.token);
    }
  }
  if (absl::Status s = flush(); !s.ok()) return s;
  return ids;
}

}  // namespace sinkserve::service
