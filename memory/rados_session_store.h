// A SessionStore shared by many servers: sessions in a Ceph RADOS pool.
//
// Same records as RocksDbSessionStore (snapshot_format.h frames: full state,
// deltas, K/V chunks; SNAPSHOT_FORMAT.md), laid out as objects:
//
//   sinkserve.index            omap: session id -> "" (the listing index)
//   sinkserve.store            data: store marker frame (layout version)
//   s.<id>                     the session's meta object:
//       data   session header frame (version, base seq, policy, counters)
//       xattr  "version"  decimal version (what writers compare)
//       xattr  "epoch"    decimal owner epoch (fencing; absent = 0)
//       omap   <seq as 16 hex digits> -> <token>: where each record of the
//              chain lives
//   r.<id>.<token>.<part>      a record: part 0 the full state or delta frame,
//                              parts 1..n its K/V chunk frames
//
// A checkpoint first writes its record objects under a fresh random token
// (invisible: nothing names them yet), then commits with ONE atomic write op
// on the meta object that compares the "version" (and, when fenced, "epoch")
// xattrs and, only if they match, writes the new header, version and record
// map. Two writers can therefore never both advance a session; the loser's
// record objects are removed. Superseded records (after a Put or a fold) are
// removed after the commit; a crash in between leaves unreferenced objects
// behind (harmless, never read).
//
// Every write RADOS acknowledges is durable on the pool's replicas, so Sync()
// has nothing to do. A cluster that does not answer makes calls fail with
// UNAVAILABLE after `op_timeout`, never hang.
//
// Thread-safe; writers of one session in this process serialize on a stripe
// lock, writers in other processes on the version compare.
#ifndef SINKSERVE_MEMORY_RADOS_SESSION_STORE_H_
#define SINKSERVE_MEMORY_RADOS_SESSION_STORE_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "memory/session_state.h"
#include "memory/session_store.h"

namespace sinkserve::memory {

struct RadosSessionStoreOptions {
  // ceph.conf of the cluster; "" uses librados' default search
  // ($CEPH_CONF, /etc/ceph/ceph.conf, ...). Default: "".
  std::string conf_path;
  // Pool holding the sessions (must exist). Default: "sessions".
  std::string pool = "sessions";
  // RADOS namespace inside the pool, so several deployments can share one
  // pool. Default: "" (the default namespace).
  std::string rados_namespace;
  // Client id to connect as (client.<id>). Default: "admin".
  std::string client_id = "admin";
  // Bound on every monitor and OSD operation and on connecting: past it a
  // call fails with UNAVAILABLE instead of waiting for the cluster.
  // Default: 10 s.
  absl::Duration op_timeout = absl::Seconds(10);
  // Owner epoch of this server; 0 writes without fencing. When set, every
  // write to a session also requires its "epoch" xattr to equal this, and a
  // write of a session owned by another epoch is FAILED_PRECONDITION
  // ("fenced: ..."). A session's epoch is raised with BumpEpoch. Default: 0.
  uint64_t fence = 0;
  // Fold a session's deltas into one full record once this many have piled
  // up; 0 never does. Default: 16.
  int compact_after_deltas = 16;
  // Fold on a background thread, or inside the Append that crosses the
  // threshold. Default: true.
  bool background_compaction = true;
  // K/V rows go into objects of at most this many bytes, read and written
  // in parallel (RADOS prefers objects of a few MB). Default: 4 MiB.
  uint64_t kv_chunk_bytes = uint64_t{4} << 20;
};

// Counters since Open.
struct RadosStoreStats {
  uint64_t full_checkpoints = 0;
  uint64_t delta_checkpoints = 0;
  uint64_t compactions = 0;
  uint64_t compaction_errors = 0;
  // Commits refused because another writer moved the session first.
  uint64_t lost_races = 0;
  // Of those, writes refused because another server owns the session.
  uint64_t fenced_writes = 0;
};

class RadosSessionStore final : public SessionStore {
 public:
  // Shares this store's connection (rados_cluster.h).
  friend class RadosLeases;

  static constexpr std::string_view kIndexObject = "sinkserve.index";
  static constexpr std::string_view kMarkerObject = "sinkserve.store";
  static constexpr uint32_t kStoreVersion = 1;

  // Connects and checks (or writes) the store marker. UNAVAILABLE if the
  // cluster does not answer within op_timeout, NOT_FOUND for a missing pool,
  // FAILED_PRECONDITION for a newer store layout.
  static absl::StatusOr<std::unique_ptr<RadosSessionStore>> Open(
      const RadosSessionStoreOptions& options);

  // Waits for a running fold, drops queued ones and disconnects.
  ~RadosSessionStore() override;

  absl::StatusOr<CheckpointResult> Put(const SessionState& state) override;
  absl::StatusOr<CheckpointResult> Append(std::string_view id,
                                          uint64_t base_version,
                                          const SessionDelta& delta) override;
  absl::StatusOr<LoadedSession> Load(
      std::string_view id, std::string_view model_fingerprint) const override;
  absl::StatusOr<LoadedSession> LoadMetadata(
      std::string_view id, std::string_view model_fingerprint) const override;
  absl::StatusOr<bool> Exists(std::string_view id) const override;
  absl::StatusOr<SessionInfo> Info(std::string_view id) const override;
  absl::StatusOr<ListPage> List(const ListOptions& options) const override;
  absl::Status Delete(std::string_view id) override;
  absl::StatusOr<VerifyReport> Verify() const override;

  // Per-session fencing (what RadosLeases sets for the sessions it holds):
  // writes of `id` require its "epoch" xattr to equal `epoch`, else they are
  // refused with FencedError. Overrides options.fence for `id`.
  void SetFence(std::string_view id, uint64_t epoch);
  void ClearFence(std::string_view id);
  // From now on a write of a session without a fence (SetFence) is refused
  // with FencedError: a server that uses leases writes only what it holds.
  void RequireFences();

  // The session's owner epoch (0 if never set, also for no session).
  absl::StatusOr<uint64_t> Epoch(std::string_view id) const;
  // Atomically sets the session's epoch to expected + 1 if it is `expected`
  // (ABORTED naming the current epoch otherwise) and returns the new epoch.
  // Works on sessions that do not exist yet: a new owner claims the id
  // before its first Put. Writers fenced at the old epoch are refused from
  // then on.
  absl::StatusOr<uint64_t> BumpEpoch(std::string_view id, uint64_t expected);

  // Folds the session's chain into one full record now. OK if there is
  // nothing to fold or the session moved meanwhile.
  absl::Status Compact(std::string_view id);
  // Blocks until every background fold queued so far has run.
  void WaitForCompactions();

  RadosStoreStats stats() const;
  const RadosSessionStoreOptions& options() const { return options_; }

  // Object names, for tools and tests that look at the raw pool.
  static std::string MetaObject(std::string_view id);
  static std::string RecordObject(std::string_view id, std::string_view token,
                                  uint32_t part);

  // What the chain reader is asked for (see the .cc).
  enum class ChainRead { kMetadata, kVerify, kFull };

 private:
  struct Meta;
  struct Chain;
  explicit RadosSessionStore(RadosSessionStoreOptions options);
  absl::Status Connect();
  // The meta object of `id` (exists false when there is none), with its
  // record map when `with_records`.
  absl::StatusOr<Meta> ReadMeta(std::string_view id, bool with_records) const;
  absl::StatusOr<Chain> ReadChain(const Meta& meta, ChainRead mode) const;
  absl::StatusOr<LoadedSession> LoadChain(std::string_view id,
                                          std::string_view model_fingerprint,
                                          bool with_kv) const;
  // Writes record `record` (seq `seq`) and its K/V chunks under a new
  // token, in parallel; returns the token. Adds the bytes to *bytes.
  absl::StatusOr<std::string> WriteRecord(std::string_view id, uint64_t seq,
                                          const std::string& record,
                                          std::string_view kv,
                                          uint64_t* bytes) const;
  // Best effort: a leftover record object is never read.
  void RemoveRecords(std::string_view id, std::string_view token,
                     uint32_t parts) const;
  // The epoch writes of `id` must assert (0: none), or FencedError when
  // fences are required and `id` has none.
  absl::StatusOr<uint64_t> FenceFor(std::string_view id) const;
  // Why a guarded commit on `id` at epoch `fence` was refused: fenced or
  // moved.
  absl::Status Refused(std::string_view id, std::string_view what,
                       uint64_t fence, uint64_t expected_version) const;
  absl::Mutex& LockFor(std::string_view id) const;
  void EnqueueCompaction(std::string_view id);
  void CompactionLoop();

  const RadosSessionStoreOptions options_;
  // The librados handle and pool context (librados.hpp stays out of this
  // header).
  struct Cluster;
  std::unique_ptr<Cluster> cluster_;
  // "pool[/namespace]" for messages.
  std::string where_;

  mutable std::array<absl::Mutex, 64> stripes_;

  mutable absl::Mutex fences_mu_;
  std::map<std::string, uint64_t, std::less<>> fences_ ABSL_GUARDED_BY(fences_mu_);
  bool require_fences_ ABSL_GUARDED_BY(fences_mu_) = false;

  absl::Mutex queue_mu_;
  absl::CondVar queue_cv_;
  std::deque<std::string> queue_ ABSL_GUARDED_BY(queue_mu_);
  std::set<std::string> queued_ ABSL_GUARDED_BY(queue_mu_);
  bool compacting_ ABSL_GUARDED_BY(queue_mu_) = false;
  bool stop_ ABSL_GUARDED_BY(queue_mu_) = false;
  std::thread compactor_;

  struct Counters {
    std::atomic<uint64_t> full_checkpoints{0};
    std::atomic<uint64_t> delta_checkpoints{0};
    std::atomic<uint64_t> compactions{0};
    std::atomic<uint64_t> compaction_errors{0};
    std::atomic<uint64_t> lost_races{0};
    std::atomic<uint64_t> fenced_writes{0};
  };
  mutable Counters counters_;
};

}  // namespace sinkserve::memory

#endif  // SINKSERVE_MEMORY_RADOS_SESSION_STORE_H_
