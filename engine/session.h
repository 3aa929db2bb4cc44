// Session: one long-lived conversation — its Sequence (KV cells and rows), its
// sampler (settings, penalty window, RNG state), its round counter and
// timestamps — and the bridge to memory::SessionState for checkpoints.
//
// Nothing in a session depends on where it runs: Snapshot() on one server and
// Restore() on another continue with exactly the tokens the first would have
// produced (same cells, scores, pending tokens and RNG state).
//
// Not thread-safe; the server's session manager gives each session one owner
// at a time.
#ifndef SINKSERVE_ENGINE_SESSION_H_
#define SINKSERVE_ENGINE_SESSION_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "engine/backend.h"
#include "engine/generator.h"
#include "engine/sampler.h"
#include "engine/sequence.h"
#include "engine/tokenizer/tokenizer.h"
#include "memory/checkpoint_pipeline.h"
#include "memory/session_state.h"
#include "memory/session_store.h"

namespace sinkserve::engine {

struct SessionConfig {
  // Default: full.
  memory::PolicyConfig policy;
  // The session's default sampling; a turn may override it.
  // Default: SamplerOptions{}.
  SamplerOptions sampling;
  // Prefill chunk (Sequence's max_step_tokens). Default: 512.
  int max_step_tokens = 512;
  // KV slots; 0 = automatic (see SequenceOptions). Default: 0.
  int capacity = 0;
  // Opaque to the engine, kept with the session for the service (chat
  // template name, system prompt). Default: "".
  std::string chat_template;
  std::string system_prompt;
  // The service pins the system prompt's cells (Sequence::PinNextTokens) when
  // it feeds them. Stored with the session. Default: false.
  bool pin_system_prompt = false;
};

class Session {
 public:
  // A new, empty session. INVALID_ARGUMENT for a bad id
  // (memory::ValidateSessionId) or config.
  static absl::StatusOr<std::unique_ptr<Session>> Create(std::string id, Backend* backend,
                                                         std::string model_fingerprint,
                                                         const SessionConfig& config);
  // Rebuilds a session from a stored state. FAILED_PRECONDITION naming both
  // fingerprints when the state was made with another model; DATA_LOSS when
  // the state is inconsistent (bad cells, rows of the wrong size, sampler
  // state that does not parse). The restored session is clean (not dirty):
  // `version` is the store version it came from.
  static absl::StatusOr<std::unique_ptr<Session>> Restore(Backend* backend,
                                                          std::string model_fingerprint,
                                                          memory::SessionState state,
                                                          uint64_t version);

  // The configuration a stored state carries (policy, sampling, chat
  // template, system prompt), without restoring it: for inspecting a session
  // that is not in memory. DATA_LOSS when it does not parse.
  static absl::StatusOr<SessionConfig> ConfigOf(const memory::SessionState& state);

  const std::string& id() const { return id_; }
  const SessionConfig& config() const { return config_; }
  const std::string& model_fingerprint() const { return model_fingerprint_; }
  Sequence& sequence() { return *sequence_; }
  const Sequence& sequence() const { return *sequence_; }
  Sampler& sampler() { return *sampler_; }
  int64_t rounds() const { return rounds_; }
  int64_t turns() const { return turns_; }
  // Length of the history the service keeps with the session, in its own
  // units (e.g. messages); stored, never interpreted. Setting it marks the
  // session dirty.
  int64_t history_length() const { return history_length_; }
  void set_history_length(int64_t n);
  // The outcome of the last completed turn, kept (and checkpointed) so that
  // a client retrying that turn by its id gets it again rather than a second
  // run; empty turn id when the last turn had none. Setting it marks the
  // session dirty.
  const memory::CompletedTurn& last_turn() const { return last_turn_; }
  void set_last_turn(memory::CompletedTurn turn);
  absl::Time created_at() const { return created_at_; }
  absl::Time updated_at() const { return updated_at_; }
  // Changed since the last checkpoint (or never checkpointed).
  bool dirty() const { return dirty_; }
  // Store version of the last checkpoint; 0 if never stored.
  uint64_t version() const { return version_; }

  // One round alone on the backend: RunTurn with the session's sampler (or,
  // for this turn only, `sampling`: same RNG and penalty window, other
  // settings), then FinishRound(). On error the session is unchanged except
  // for what a failed turn cannot undo (it is then marked dirty).
  absl::StatusOr<GenerationStats> Turn(const Tokenizer& tokenizer,
                                       absl::Span<const int32_t> prompt,
                                       const GeneratorOptions& options,
                                       const GeneratorCallbacks& callbacks,
                                       const std::optional<SamplerOptions>& sampling = {});

  // Ends a round the caller drove itself (the server's scheduler steps the
  // Sequence directly): SirLLM decay, turns/rounds counters, updated_at,
  // dirty.
  void FinishRound();
  // Marks the session changed (the scheduler fed or sampled tokens).
  void Touch();

  // The full state, K/V rows included.
  absl::StatusOr<memory::SessionState> Snapshot() const;

  // Writes a checkpoint if dirty: a delta against the last checkpoint (cells
  // added and evicted, scores, counters; K/V rows of new cells only) when
  // there is one and the policy allows it (not `recompute`), else a full
  // record. Errors leave the session dirty and its last checkpoint as it was.
  absl::StatusOr<memory::CheckpointResult> Checkpoint(memory::SessionStore* store);

  // Captures a checkpoint for a memory::CheckpointPipeline instead of writing
  // it: what Checkpoint would write (a delta against the last capture; a full
  // state when there is none, for `recompute`, or when `full` is asked for
  // after a failed write), with the K/V rows exported asynchronously where
  // the backend can. The session then counts as checkpointed: the capture is
  // the base of the next one, so captures must reach the store in order (the
  // pipeline keeps them so). A clean session, not forced, yields a barrier
  // (neither full nor delta). Use one way per session: Checkpoint() after
  // captures would diff against a version the session does not know.
  absl::StatusOr<memory::PendingCheckpoint> Capture(bool full = false);

 private:
  Session() = default;

  std::string id_;
  SessionConfig config_;
  std::string model_fingerprint_;
  std::unique_ptr<Sequence> sequence_;
  std::unique_ptr<Sampler> sampler_;
  int64_t rounds_ = 0;
  int64_t turns_ = 0;
  int64_t history_length_ = 0;
  memory::CompletedTurn last_turn_;
  absl::Time created_at_;
  absl::Time updated_at_;
  bool dirty_ = true;
  uint64_t version_ = 0;
  // Metadata of the last checkpoint (no K/V rows), the base of the next delta.
  std::optional<memory::SessionState> checkpointed_;
};

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_SESSION_H_
