// SessionState: everything needed to resume one chat session on another
// server, and SessionDelta: what changed between two checkpoints of it.
//
// A state is position-free (keys are stored before RoPE, positions are logical
// indices, see DESIGN.md), so it is just the KvCache's cell metadata, the K/V
// rows of those cells as opaque bytes and the session's own counters. memory/
// never sees engine types: the rows carry a dtype *name* and their shape.
//
// Checkpointing a session:
//
//   SessionState next = ...;                  // metadata of the live session
//   ASSIGN_OR_RETURN(SessionDelta delta, DiffMetadata(last_checkpoint, next));
//   RETURN_IF_ERROR(kv->ExportSlots(delta.KvSlots(), &delta.kv));
//   ASSIGN_OR_RETURN(auto result, store->Append(id, version, delta));
//
// DiffMetadata assumes the K/V rows of kept cells did not change, which holds
// for every policy but `recompute` (it rewrites the last window cells each
// step); checkpoint those with Diff (full rows on both sides) or a full Put.
#ifndef SINKSERVE_MEMORY_SESSION_STATE_H_
#define SINKSERVE_MEMORY_SESSION_STATE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "memory/cache_policy.h"
#include "memory/kv_cache.h"

namespace sinkserve::memory {

// Session ids are 1..kMaxSessionIdBytes bytes of printable ASCII without
// spaces (0x21..0x7E): they appear verbatim in every error message and in
// RocksDB keys, where a NUL byte separates them from what follows.
//
// A tenant's session is stored under a scoped id, TENANT 0x1F ID, where
// TENANT is 1..kMaxTenantBytes of [a-z0-9_-]: the separator is no byte a
// plain id may hold, so two tenants' ids never meet, and the sessions stored
// before tenants existed (plain ids) stay where they are.
inline constexpr size_t kMaxSessionIdBytes = 256;
inline constexpr size_t kMaxTenantBytes = 64;
inline constexpr char kTenantSeparator = '\x1f';
absl::Status ValidateSessionId(std::string_view id);
// Whether `tenant` is a valid TENANT (above).
absl::Status ValidateTenantName(std::string_view tenant);

// Shape of a session's K/V rows.
struct KvShape {
  // Storage dtype as the backend names it (engine::KvDtypeName: "f32", "f16",
  // "bf16"); only compared, never interpreted. Default: "".
  std::string dtype;
  // Bytes per element (engine::KvDtypeBytes). Default: 0.
  int32_t dtype_bytes = 0;
  // Default: 0.
  int32_t n_layers = 0;
  // Elements per K (or V) row: n_kv_heads * head_dim. Default: 0.
  int32_t kv_dim = 0;

  // One K or V row of one cell in one layer.
  int64_t row_bytes() const { return int64_t{kv_dim} * dtype_bytes; }
  // All rows of one cell: n_layers * 2 * row_bytes().
  int64_t cell_bytes() const { return int64_t{n_layers} * 2 * row_bytes(); }

  // INVALID_ARGUMENT unless every field is set and within sane bounds.
  absl::Status Validate() const;

  friend bool operator==(const KvShape& a, const KvShape& b) {
    return a.dtype == b.dtype && a.dtype_bytes == b.dtype_bytes &&
           a.n_layers == b.n_layers && a.kv_dim == b.kv_dim;
  }
  friend bool operator!=(const KvShape& a, const KvShape& b) {
    return !(a == b);
  }
};

// A generated token that is not in the cache yet (engine::PendingToken): it
// was sampled at the end of a turn and the next turn feeds it first, so it is
// part of the conversation and of every snapshot.
struct PendingToken {
  // Default: 0.
  int32_t token = 0;
  // Its surprisal, known at sampling time (0 when the policy keeps none).
  // Default: 0.
  float score = 0.0f;
};
// Most pending tokens a state may hold; a live session has 0 or 1.
inline constexpr size_t kMaxPendingTokens = 1 << 16;

// The outcome of a session's last completed turn, kept with the session so
// that a client retrying that turn (same client-chosen turn id, after a
// broken stream, a restart or a move to another replica) gets this result
// again instead of a second run that would feed its message twice. The
// service fills it; memory/ only stores it (format version 3).
struct CompletedTurn {
  // The client's turn id; empty = the last turn had none (nothing to
  // replay, the other fields are empty). Default: "".
  std::string turn_id;
  // The reply as streamed: text, token ids and, when the turn asked for
  // them, one log-probability per token (else none). Default: empty.
  std::string text;
  std::vector<int32_t> token_ids;
  std::vector<float> logprobs;
  // The service's stop reason (sinkserve.v1.StopReason), opaque here.
  // Default: 0.
  int32_t stop_reason = 0;
  // Usage as reported when the turn ended. Default: 0.
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  int64_t cells_kept = 0;
  int64_t cells_evicted = 0;

  bool empty() const { return turn_id.empty(); }
  // Bit-exact (log-probabilities compare by their bits).
  friend bool operator==(const CompletedTurn& a, const CompletedTurn& b);
  friend bool operator!=(const CompletedTurn& a, const CompletedTurn& b) {
    return !(a == b);
  }
};
// Most bytes of a completed turn's text and most token ids it may hold.
inline constexpr size_t kMaxCompletedTurnBytes = size_t{1} << 24;

struct SessionState {
  SessionState() = default;
  SessionState(SessionState&&) = default;
  SessionState& operator=(SessionState&&) = default;
  // Deep copy, K/V rows included; explicit because they can be gigabytes.
  SessionState Copy() const { return SessionState(*this); }

  // See ValidateSessionId. Default: "".
  std::string id;
  // Identifies the model (weights, config, tokenizer) the K/V rows were
  // computed with, e.g. a hash of the GGUF file; loading under another model
  // is refused. Must not be empty. Default: "".
  std::string model_fingerprint;
  // Default: PolicyConfig{} (full).
  PolicyConfig policy;
  // Slots of the session's KvStorage; every cell's slot is below it.
  // Default: 0.
  int32_t capacity = 0;
  // Cells in logical order, next arrival index, evictions so far, pins
  // (format version 4; older states have none).
  KvCacheState cache;
  // Default: all zero (invalid: Validate requires a shape).
  KvShape kv_shape;
  // K/V rows of cache.cells in logical order, laid out
  // (layer, {K, V}, cell, kv_dim) in kv_shape.dtype: exactly what
  // KvStorage::ExportSlots(cache's context slots) returns. Default: "".
  std::string kv;
  // Generated tokens not cached yet, oldest first (format version 2; states
  // of version 1 have none). Default: none.
  std::vector<PendingToken> pending;
  // Rounds (one user turn + one reply) completed; drives SirLLM's decay.
  // Default: 0.
  int64_t rounds = 0;
  // Conversation turns taken, and the length of the history the service keeps
  // with the session (in its own units, e.g. messages). Default: 0.
  int64_t turns = 0;
  int64_t history_length = 0;
  // The last completed turn, for exactly-once retries (format version 3;
  // older states have none). Default: none (empty turn id).
  CompletedTurn last_turn;
  // The sampler's settings, serialized by its owner, and the state of its
  // random generator; both opaque here. Default: "".
  std::string sampler_config;
  std::string rng_state;
  // Stored with nanosecond precision. Default: the Unix epoch.
  absl::Time created_at = absl::UnixEpoch();
  absl::Time updated_at = absl::UnixEpoch();

  // INVALID_ARGUMENT naming the first bad field: the id, an empty fingerprint,
  // the policy, the shape, cells that KvCache::Restore would reject (arrivals
  // not strictly increasing or >= tokens_seen, slots repeated or outside
  // [0, capacity), NaN scores, pins that ValidatePins rejects), bad pending tokens (negative id, NaN score,
  // more than kMaxPendingTokens), a last turn with logprobs that do not
  // match its token ids or over kMaxCompletedTurnBytes, or kv of the wrong
  // size.
  absl::Status Validate() const;
  // Validate without the kv size check, for states read without their rows.
  absl::Status ValidateMetadata() const;

  // Bit-exact: scores compare by their bits, so a loaded state equals the
  // saved one only if nothing was rounded on the way.
  friend bool operator==(const SessionState& a, const SessionState& b);
  friend bool operator!=(const SessionState& a, const SessionState& b) {
    return !(a == b);
  }

 private:
  SessionState(const SessionState&) = default;
  SessionState& operator=(const SessionState&) = default;
};

// What changed since the previous checkpoint. Applying it to that checkpoint's
// state gives the new one (ApplyDelta).
struct SessionDelta {
  SessionDelta() = default;
  SessionDelta(SessionDelta&&) = default;
  SessionDelta& operator=(SessionDelta&&) = default;
  SessionDelta Copy() const { return SessionDelta(*this); }

  // Arrivals of the cells evicted since, ascending.
  std::vector<int64_t> evicted;
  // New metadata (score, slot) of kept cells that changed, ascending by
  // arrival; token and arrival identify the cell and must match.
  std::vector<Cell> updated;
  // Kept cells whose K/V rows were rewritten (recompute), with their new
  // metadata, ascending by arrival; not also listed in `updated`.
  std::vector<Cell> rewritten;
  // Cells appended since, in logical order; arrivals at or after the previous
  // state's tokens_seen.
  std::vector<Cell> added;
  // K/V rows of `rewritten` then `added`: ExportSlots(KvSlots()), laid out
  // (layer, {K, V}, i, kv_dim).
  std::string kv;

  // New values of the state's counters.
  int64_t tokens_seen = 0;
  int64_t evicted_total = 0;
  int64_t rounds = 0;
  int64_t turns = 0;
  int64_t history_length = 0;
  absl::Time updated_at = absl::UnixEpoch();
  // Set when they changed.
  std::optional<std::string> sampler_config;
  std::optional<std::string> rng_state;
  // The new pending tokens, set when they changed (unset: keep them).
  std::optional<std::vector<PendingToken>> pending;
  // The new last completed turn, set when it changed (unset: keep it).
  std::optional<CompletedTurn> last_turn;
  // The new pins (format version 4), set when they changed (unset: keep
  // them). Cells' pinned flags follow from the pins, so cells whose flag
  // alone changed are not listed in `updated`.
  std::optional<std::vector<Pin>> pins;

  // Slots of `rewritten` then `added`: the rows `kv` must hold.
  std::vector<int32_t> KvSlots() const;
  // Cells whose rows `kv` holds: rewritten.size() + added.size().
  int64_t kv_cells() const {
    return static_cast<int64_t>(rewritten.size() + added.size());
  }

  friend bool operator==(const SessionDelta& a, const SessionDelta& b);

 private:
  SessionDelta(const SessionDelta&) = default;
  SessionDelta& operator=(const SessionDelta&) = default;
};

// The delta from `prev` to `next` without K/V rows: `rewritten` and `kv` are
// left empty for the caller to fill (see the top of this file). The two states
// must be the same session (id, fingerprint, policy, capacity and shape
// equal, else INVALID_ARGUMENT: write a full snapshot instead) and valid;
// their `kv` fields are not read.
absl::StatusOr<SessionDelta> DiffMetadata(const SessionState& prev,
                                          const SessionState& next);

// The complete delta, K/V rows included, from two states holding all their
// rows; kept cells whose rows differ go to `rewritten`. O(bytes of kv).
absl::StatusOr<SessionDelta> Diff(const SessionState& prev,
                                  const SessionState& next);

// Applies `delta` to `state` (the state it was made from). INVALID_ARGUMENT,
// with `state` unchanged, if it does not fit: evicting or updating cells that
// are not there, added arrivals not after the existing ones, kv of the wrong
// size, a result that fails Validate.
absl::Status ApplyDelta(const SessionDelta& delta, SessionState* state);

// Replays a full state and a chain of deltas while copying every K/V row only
// once, in Finish: cells remember which buffer and row their K/V come from.
// With `with_kv` false it tracks metadata only (the caller vouches for, or
// does not need, the rows): Apply ignores kv sizes and Finish leaves kv empty.
class StateReplayer {
 public:
  // `base` must be valid (Validate); with_kv false ignores base.kv.
  StateReplayer(SessionState base, bool with_kv);

  // As ApplyDelta; `kv` replaces delta.kv, whose content is ignored (so
  // callers holding the rows separately need not copy them into a delta).
  absl::Status Apply(const SessionDelta& delta, std::string kv);

  // The state so far, without kv.
  const SessionState& metadata() const { return state_; }

  // The final state; the replayer is spent.
  SessionState Finish() &&;

 private:
  // Where a cell's rows live: buffers_[buffer], row `row` of that buffer.
  struct Source {
    int32_t buffer;
    int32_t row;
  };

  bool with_kv_;
  SessionState state_;           // kv empty while replaying
  std::vector<Source> sources_;  // parallel to state_.cache.cells
  std::vector<std::string> buffers_;
  std::vector<int64_t> buffer_rows_;
};

// Metadata summary of a session, what the store lists without touching K/V
// rows.
struct SessionInfo {
  std::string id;
  std::string model_fingerprint;
  // PolicyConfig::ToString().
  std::string policy;
  int32_t capacity = 0;
  KvShape kv_shape;
  int64_t cells = 0;
  int64_t tokens_seen = 0;
  int64_t rounds = 0;
  int64_t turns = 0;
  int64_t history_length = 0;
  absl::Time created_at = absl::UnixEpoch();
  absl::Time updated_at = absl::UnixEpoch();
  // The store's checkpoint number of the newest state; Append takes it back.
  uint64_t version = 0;
  // Deltas stored on top of the last full record.
  int64_t deltas = 0;

  static SessionInfo Of(const SessionState& state);
};

}  // namespace sinkserve::memory

#endif  // SINKSERVE_MEMORY_SESSION_STATE_H_
