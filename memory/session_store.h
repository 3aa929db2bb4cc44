// SessionStore: durable checkpoints of chat sessions (see session_state.h).
//
// A session is stored as a chain: one full state, then deltas. Each Put or
// Append is one atomic checkpoint that returns the session's new version;
// Append names the version its delta was made against, so a delta is never
// applied to a state it was not computed from. Load replays the chain,
// verifying every checksum, and refuses a session checkpointed under another
// model. Implementations fold long chains back into one full record.
//
// Status codes (what a caller should do):
//   NOT_FOUND            no such session
//   ABORTED              Append against a stale version: Load (or Put) again
//   FAILED_PRECONDITION  model fingerprint mismatch; store/format too new;
//                        write to a read-only store
//   DATA_LOSS            a record is corrupt or missing; the message names the
//                        session and record. Other sessions are unaffected.
//   INVALID_ARGUMENT     a bad state, delta or id from the caller
//   UNAVAILABLE / RESOURCE_EXHAUSTED / PERMISSION_DENIED
//                        the storage failed (I/O error / disk full / access)
//
// Thread-safe. Writes to one session are serialized; Loads see a consistent
// snapshot and never wait for writers.
#ifndef SINKSERVE_MEMORY_SESSION_STORE_H_
#define SINKSERVE_MEMORY_SESSION_STORE_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "memory/session_state.h"

namespace sinkserve::memory {

struct CheckpointResult {
  // The session's version after this checkpoint.
  uint64_t version = 0;
  // Bytes handed to the storage for it (keys, values, batch framing). Folding
  // a chain later is counted by the store, not here.
  uint64_t bytes_written = 0;
  // A full record (Put) or a delta (Append).
  bool full = false;
  absl::Duration latency;
};

struct LoadedSession {
  SessionState state;
  uint64_t version = 0;
  // Records replayed (1 + deltas) and record bytes read.
  int64_t records = 0;
  uint64_t bytes_read = 0;
};

struct ListOptions {
  // Ids after this one, in byte order. Default: "" (from the first).
  std::string start_after;
  // Default: 100; at most 10,000.
  int max_sessions = 100;
};

struct BadSession {
  std::string id;
  absl::Status status;
};

struct ListPage {
  std::vector<SessionInfo> sessions;
  // Sessions in the page whose metadata could not be read (listed, not
  // skipped silently, not failing the page).
  std::vector<BadSession> bad;
  // Pass as start_after for the next page; "" after the last page.
  std::string next_start_after;
};

struct VerifyReport {
  int64_t sessions_checked = 0;
  // Every session that failed, with why; checking goes on past each.
  std::vector<BadSession> bad;
};

struct ImportOptions {
  // Replace sessions that already exist instead of failing with
  // ALREADY_EXISTS before anything is written. Default: false.
  bool overwrite = false;
};

struct TransferResult {
  int64_t sessions = 0;
  uint64_t bytes = 0;  // of the file
};

class SessionStore {
 public:
  // Pass as Load's fingerprint to load a session whatever model made it
  // (tools: export, inspection). Servers always pass their model's.
  static constexpr std::string_view kAnyModel = "<any model>";

  virtual ~SessionStore() = default;

  // Stores `state` (validated) as a full checkpoint, replacing whatever the
  // session held.
  virtual absl::StatusOr<CheckpointResult> Put(const SessionState& state) = 0;

  // Stores the changes from the session's state at `base_version` (the
  // version a Put, Append or Load returned). NOT_FOUND without a session;
  // ABORTED if it has moved past base_version; INVALID_ARGUMENT if `delta`
  // does not apply to that state.
  virtual absl::StatusOr<CheckpointResult> Append(
      std::string_view id, uint64_t base_version,
      const SessionDelta& delta) = 0;

  // The newest state. FAILED_PRECONDITION, naming both fingerprints, if it
  // was checkpointed under a model other than `model_fingerprint` (or
  // kAnyModel); DATA_LOSS if a record fails its checks.
  virtual absl::StatusOr<LoadedSession> Load(
      std::string_view id, std::string_view model_fingerprint) const = 0;

  // Load without the K/V rows (state.kv empty; the rows' checksums are not
  // read either): for inspecting a session that is not in memory. Default:
  // Load, then drops the rows.
  virtual absl::StatusOr<LoadedSession> LoadMetadata(std::string_view id,
                                                     std::string_view model_fingerprint) const {
    absl::StatusOr<LoadedSession> loaded = Load(id, model_fingerprint);
    if (loaded.ok()) loaded->state.kv.clear();
    return loaded;
  }

  // Cheap: reads per-session metadata only, never K/V rows.
  virtual absl::StatusOr<bool> Exists(std::string_view id) const = 0;
  virtual absl::StatusOr<SessionInfo> Info(std::string_view id) const = 0;
  virtual absl::StatusOr<ListPage> List(const ListOptions& options) const = 0;

  // NOT_FOUND if there is no such session.
  virtual absl::Status Delete(std::string_view id) = 0;

  // Makes every write that has returned so far durable (survive power loss),
  // for stores that do not sync each write: one sync then covers many
  // checkpoints (group commit). Default: nothing to do.
  virtual absl::Status Sync() { return absl::OkStatus(); }

  // Reads every record of every session and checks it; reports all bad
  // sessions. Fails only if the store itself cannot be read.
  virtual absl::StatusOr<VerifyReport> Verify() const = 0;

  // Writes the newest state of `ids` (all sessions if empty) as one portable
  // file (see SNAPSHOT_FORMAT.md). The file appears complete or not at all.
  absl::StatusOr<TransferResult> Export(
      const std::string& path, absl::Span<const std::string> ids = {}) const;

  // Checks the whole file (DATA_LOSS if truncated or corrupt, nothing
  // written), then Puts every session in it. Each session is atomic; an I/O
  // failure midway leaves the sessions before it imported.
  absl::StatusOr<TransferResult> Import(const std::string& path,
                                        const ImportOptions& options = {});
};

}  // namespace sinkserve::memory

#endif  // SINKSERVE_MEMORY_SESSION_STORE_H_
