// Byte-level BPE ("gpt2") tokenizer, as llama.cpp's llm_tokenizer_bpe.
//
// Encoding: split off special tokens (SpecialTokenSplitter: user-defined
// tokens always, control and unknown ones with parse_special), pre-tokenize
// the text between them as tokenizer.ggml.pre says (pretokenizer.h), map each
// piece's bytes to GPT-2's printable byte characters and apply
// tokenizer.ggml.merges by rank within the piece. Decoding (TokenBytes) maps
// the byte characters back, so decode(encode(text)) == text for any valid
// UTF-8 text.
//
// The tokenizer is immutable after construction; Encode and TokenBytes may
// be called from many threads at once.
#ifndef SINKSERVE_ENGINE_TOKENIZER_BPE_TOKENIZER_H_
#define SINKSERVE_ENGINE_TOKENIZER_BPE_TOKENIZER_H_

#include <memory>

#include "absl/status/statusor.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/vocab.h"

namespace sinkserve::engine {

// `vocab.model` must be kBpe; an unknown `vocab.pre` is INVALID_ARGUMENT
// naming it and the supported ones (an empty one means "default", as in
// llama.cpp).
absl::StatusOr<std::unique_ptr<Tokenizer>> NewBpeTokenizer(Vocab vocab);

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_TOKENIZER_BPE_TOKENIZER_H_
