// SentencePiece ("llama") tokenizer, as llama.cpp's llm_tokenizer_spm: the
// text gets a leading space, spaces become U+2581, and adjacent pieces are
// merged best-score-first; characters left outside the vocab fall back to
// <0xNN> byte tokens (or <unk> when the vocab has none).
#ifndef SINKSERVE_ENGINE_TOKENIZER_SPM_TOKENIZER_H_
#define SINKSERVE_ENGINE_TOKENIZER_SPM_TOKENIZER_H_

#include <memory>

#include "absl/status/statusor.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/vocab.h"

namespace sinkserve::engine {

// `vocab.model` must be kSpm and the vocab valid (Vocab::Validate).
absl::StatusOr<std::unique_ptr<Tokenizer>> NewSpmTokenizer(Vocab vocab);

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_TOKENIZER_SPM_TOKENIZER_H_
