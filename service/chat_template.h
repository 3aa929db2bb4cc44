// Chat formatting for the model families the service knows, one user turn at
// a time.
//
// A session lives for days and its KV cache already holds every earlier turn,
// so the template is never re-rendered over the whole history (as HF's Jinja
// templates are): FormatTurnPieces produces only what to append to what is
// cached, ending with the assistant header so that generation starts there.
//
// A turn is rendered as pieces, the template's markup apart from the user's
// message and the system prompt, because only the markup may spell special
// tokens ("<|eot_id|>", "</s>"): typed by a user, "<|im_end|>" must stay text,
// or the user could close their own turn and write the assistant's. Encode a
// turn with TurnEncoder, which parses special tokens in the markup only. BOS
// comes from the markup too (as `bos_text`), never from
// EncodeOptions::add_bos.
#ifndef SINKSERVE_SERVICE_CHAT_TEMPLATE_H_
#define SINKSERVE_SERVICE_CHAT_TEMPLATE_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/vocab.h"

namespace sinkserve::service {

enum class ChatFamily {
  kRaw,      // text as is: base models such as stories260K
  kLlama2,   // <s>[INST] <<SYS>>\n...\n<</SYS>>\n\nuser [/INST]
  kLlama3,   // <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>
  kChatMl,   // <|im_start|>role\n...<|im_end|>\n
  kMistral,  // <s>[INST] user [/INST]answer</s>[INST] ...
  kZephyr,   // <|user|>\n...</s>\n<|assistant|>\n
};

// "raw", "llama2", "llama3", "chatml", "mistral", "zephyr".
std::string_view ChatFamilyName(ChatFamily family);

// Accepts the names above (case-insensitive) and the aliases "llama-2",
// "llama-3" and "im_start"; anything else is INVALID_ARGUMENT listing them.
absl::StatusOr<ChatFamily> ParseChatFamily(std::string_view name);

struct ChatFamilyGuess {
  ChatFamily family = ChatFamily::kRaw;
  // Non-empty when the guess is a fallback or an approximation; the caller
  // logs it (and may pass it on to the client).
  std::string warning;
};

// Guesses the family from a GGUF's tokenizer.chat_template (Jinja text) by
// its distinctive markers. An empty template is raw without a warning (a base
// model); a template with none of the known markers is raw with a warning.
ChatFamilyGuess DetectChatFamily(std::string_view jinja);

struct ChatTemplate {
  ChatFamily family = ChatFamily::kRaw;
  // Text of the model's BOS / EOS tokens; "" = the model has none. Llama 2,
  // Mistral and Zephyr close assistant replies with the EOS token, and Llama 2
  // opens every turn with BOS, so these matter beyond the first turn.
  std::string bos_text;
  std::string eos_text;
};

// What the model's vocabulary says about chat formatting.
struct ModelChatInfo {
  std::string chat_template;  // tokenizer.chat_template; "" = none
  std::string bos_text;       // "" = no BOS token
  std::string eos_text;       // "" = no EOS token
  bool add_bos = false;       // tokenizer.ggml.add_bos_token
};

ModelChatInfo ModelChatInfoFromVocab(const engine::Vocab& vocab);

struct ChatTemplateSelection {
  ChatTemplate chat_template;
  std::string warning;  // from detection; "" when nothing to say
};

// `requested` is SessionConfig.chat_template: "" picks the family from the
// model's template, a name forces it (unknown names are INVALID_ARGUMENT).
// BOS/EOS texts come from the model, or the family's usual ones when the
// model has none.
absl::StatusOr<ChatTemplateSelection> SelectChatTemplate(
    std::string_view requested, const ModelChatInfo& model);

struct TurnContext {
  // The user's message, inserted verbatim (Llama 2 / 3 trim it, as their
  // reference templates do).
  std::string_view user_text;
  // The cache is empty: BOS (when `add_bos`) and the system prompt go first.
  // Default: false.
  bool first_turn = false;
  // The cache ends with an assistant reply whose end-of-turn token was never
  // fed (the decoder stops before it, or the turn was cut short): close that
  // reply first. Ignored on the first turn.
  // Default: false.
  bool after_assistant = false;
  // Start the session with the template's BOS text (pass the vocab's
  // add_bos, as llama.cpp does).
  // Default: true.
  bool add_bos = true;
  // Used on the first turn only; "" = none. Mistral has no system role, so
  // it is prepended to the first user message there; raw prepends it as is.
  std::string_view system_prompt;
  // Only what comes before the user's message on the first turn: BOS and the
  // system prompt with its markup (what a session pins). Default: false.
  bool system_only = false;
};

// One stretch of a formatted turn.
struct TurnPiece {
  std::string text;
  // The template's own markup, whose special-token texts are those tokens;
  // false for the user's message and the system prompt, whose text is only
  // ever text. Default: false.
  bool markup = false;

  bool operator==(const TurnPiece& other) const {
    return text == other.text && markup == other.markup;
  }
};

// What to append to the cache for one user turn, ending where the
// assistant's reply begins. Adjacent pieces differ in `markup`; empty pieces
// are left out.
std::vector<TurnPiece> FormatTurnPieces(const ChatTemplate& chat_template,
                                        const TurnContext& turn);

// The pieces' texts joined: what the model reads, for logs and tests. Do not
// tokenize it with special tokens parsed; use TurnEncoder.
std::string FormatTurn(const ChatTemplate& chat_template,
                       const TurnContext& turn);

// Token ids of formatted turns. Special-token texts become their ids in
// markup only; the user's and system text is tokenized with parse_special
// off. Text on either side of a piece boundary is tokenized as one run, so a
// turn without special-token texts in its content encodes exactly as the
// joined string would with special tokens parsed (the way llama.cpp and HF
// encode a rendered template).
//
// Holds a view of the tokenizer, which must outlive it. Thread-safe.
class TurnEncoder {
 public:
  explicit TurnEncoder(const engine::Tokenizer& tokenizer);

  // INVALID_ARGUMENT when the text is not UTF-8.
  absl::StatusOr<std::vector<int32_t>> Encode(
      absl::Span<const TurnPiece> pieces) const;

  const engine::Tokenizer& tokenizer() const { return tokenizer_; }

 private:
  const engine::Tokenizer& tokenizer_;
  // Built once: it scans the whole vocabulary.
  engine::SpecialTokenSplitter splitter_;
};

// The text that closes an assistant reply (the markup FormatTurnPieces puts
// first when `after_assistant`): "<|eot_id|>", "<|im_end|>\n", the EOS text,
// or "" for raw.
std::string EndOfAssistant(const ChatTemplate& chat_template);

// Texts that end an assistant reply when generated: the template's
// end-of-turn token and the model's EOS, without duplicates. The decoder
// maps each to a token id where the vocab has one, and otherwise matches it
// as a stop string.
std::vector<std::string> StopTexts(const ChatTemplate& chat_template);

}  // namespace sinkserve::service

#endif  // SINKSERVE_SERVICE_CHAT_TEMPLATE_H_
