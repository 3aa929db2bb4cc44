// The decoder interface every compute backend (CPU reference, CUDA) implements.
//
// A backend owns the model weights in its own memory and the K/V *rows* of
// every sequence (KvStorage). It knows nothing of eviction policies: the caller
// (memory::KvCache) decides which slot holds which cell and at which RoPE
// position, and passes that in with every step. Keys are stored BEFORE RoPE;
// attention rotates keys and queries on the fly from the positions given, so
// evicting cells never re-rotates anything.
#ifndef SINKSERVE_ENGINE_BACKEND_H_
#define SINKSERVE_ENGINE_BACKEND_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/gguf/model_config.h"
#include "memory/pending_rows.h"

namespace sinkserve::engine {

enum class KvDtype { kF32, kF16, kBF16 };

std::string_view KvDtypeName(KvDtype dtype);
// The inverse of KvDtypeName ("f32", "f16", "bf16"; case-sensitive), for
// command-line flags and configs. INVALID_ARGUMENT names the accepted values.
absl::StatusOr<KvDtype> ParseKvDtype(std::string_view name);
size_t KvDtypeBytes(KvDtype dtype);

// K/V rows of one sequence: `capacity` slots; per layer and slot a pre-RoPE key
// row and a value row of kv_dim = n_kv_heads * head_dim elements each.
class KvStorage {
 public:
  virtual ~KvStorage() = default;

  virtual int capacity() const = 0;
  virtual KvDtype dtype() const = 0;

  // Copies slot `from` to slot `to` in every layer, for each pair in order.
  // Used by compaction; pairs must not read a slot an earlier pair wrote.
  virtual absl::Status MoveSlots(absl::Span<const std::pair<int32_t, int32_t>> moves) = 0;

  // Raw rows of `slots` in the storage dtype, laid out
  // (layer, {K, V}, slot index in `slots`, kv_dim). For snapshots.
  virtual absl::Status ExportSlots(absl::Span<const int32_t> slots,
                                   std::string* out) const = 0;
  // ExportSlots without waiting for the copy where the storage can (an
  // accelerator's: a device-side gather, then an asynchronous copy to pinned
  // host memory). The rows are those of now: later steps, moves and imports
  // do not change what Wait() returns. Default: ExportSlots, done at once.
  virtual absl::StatusOr<std::unique_ptr<memory::PendingRows>> ExportSlotsAsync(
      absl::Span<const int32_t> slots) const;
  // The inverse of ExportSlots; `bytes` must have exactly that layout.
  virtual absl::Status ImportSlots(absl::Span<const int32_t> slots,
                                   std::string_view bytes) = 0;
};

enum class LogitsMode {
  kNone,  // prefill chunk whose logits nobody needs
  kLast,  // logits of the last new token (normal decoding)
  kAll,   // logits of every new token (token scores for SirLLM, perplexity)
};

// One sequence's share of a batched step.
struct SequenceStep {
  KvStorage* kv = nullptr;
  // Cells already cached that the new tokens attend to, in logical order: the
  // slot holding each one and its RoPE position (normally 0..n-1).
  absl::Span<const int32_t> context_slots;
  absl::Span<const int32_t> context_positions;
  // New tokens: ids, the slot each one's K/V is written to and its position.
  // New token i attends to every context cell and to new tokens 0..i.
  absl::Span<const int32_t> tokens;
  absl::Span<const int32_t> token_slots;
  absl::Span<const int32_t> token_positions;
  LogitsMode logits = LogitsMode::kLast;
};

struct StepResult {
  // One entry per SequenceStep; (rows, vocab_size) row-major, rows = 0, 1 or
  // tokens.size() by LogitsMode. Vectors are reused across calls.
  std::vector<std::vector<float>> logits;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string_view name() const = 0;
  virtual const ModelConfig& config() const = 0;

  virtual absl::StatusOr<std::unique_ptr<KvStorage>> NewKvStorage(int capacity) = 0;

  // Advances every sequence in `batch` in one forward pass (prefill chunks and
  // single decode tokens mixed). Each KvStorage appears at most once.
  virtual absl::Status Forward(absl::Span<const SequenceStep> batch,
                               StepResult* result) = 0;
};

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_BACKEND_H_
