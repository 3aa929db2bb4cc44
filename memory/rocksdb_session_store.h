// The default SessionStore: an embedded RocksDB database in one directory.
//
// Layout (details in SNAPSHOT_FORMAT.md):
//   column family "meta": <id>                   -> session header (small)
//   column family "kv":   <id> 0x00 <seq> <part> -> part 0: full state or
//                         delta record; parts 1..n: its K/V rows in chunks
//   default:              "sinkserve.store"      -> store marker (version)
// "kv" uses RocksDB's integrated BlobDB, so K/V chunks live in blob files and
// compaction of the LSM tree does not rewrite them.
//
// Every checkpoint is one WriteBatch (header + record + chunks + deletion of
// what it supersedes), so a crash leaves a session at its previous or its new
// checkpoint, never between. With `sync` (the default) a checkpoint that has
// returned survives power loss too.
//
// A write that fails so that RocksDB stops taking writes (a full disk) is
// RESOURCE_EXHAUSTED / UNAVAILABLE; the store then resumes the database
// (DB::Resume) before its next write, so it takes checkpoints again as soon
// as there is room, without a restart. Errors RocksDB cannot resume from
// (EFBIG, EDQUOT or EIO on the WAL) keep failing writes with a message that
// the store must be reopened.
#ifndef SINKSERVE_MEMORY_ROCKSDB_SESSION_STORE_H_
#define SINKSERVE_MEMORY_ROCKSDB_SESSION_STORE_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "memory/session_state.h"
#include "memory/session_store.h"

namespace rocksdb {
class ColumnFamilyHandle;
class DB;
class Status;
class WriteBatch;
}  // namespace rocksdb

namespace sinkserve::memory::records {
struct RecordDb;
class WriteErrorTracker;
}  // namespace sinkserve::memory::records

namespace sinkserve::memory {

struct RocksDbSessionStoreOptions {
  // Create the directory (with its parents) and the database when missing;
  // otherwise a missing directory is NOT_FOUND. Default: true.
  bool create_if_missing = true;
  // Open without writing anything (inspection, export, read-only media);
  // every write is FAILED_PRECONDITION. Default: false.
  bool read_only = false;
  // fsync the write-ahead log before a checkpoint returns, so it survives
  // power loss; without, checkpoints survive a crash of the process but the
  // last ones may be lost with the machine. Default: true.
  bool sync = true;
  // Fold a session's deltas into one full record once this many have piled
  // up on its last full record; 0 never does. Load cost grows with the chain,
  // write cost per fold with the session. Default: 16.
  int compact_after_deltas = 16;
  // Fold on a background thread (the Append that crosses the threshold
  // returns at once) or inside that Append. Default: true.
  bool background_compaction = true;
  // Values at least this large ("kv" column family) go to blob files.
  // Default: 4096.
  uint64_t min_blob_size = 4096;
  // K/V rows are stored in values of at most this many bytes, which bounds
  // the memory of one read. Default: 4 MiB.
  uint64_t kv_chunk_bytes = uint64_t{4} << 20;
  // A checkpoint carrying more K/V bytes than this skips the write-ahead log:
  // it is made durable by flushing the memtables (their values go straight
  // into blob files), so its rows reach the disk once instead of twice (WAL,
  // then blob file). Smaller ones go through the WAL, whose sync is cheaper
  // than a flush. A WAL-logged write to a session never becomes durable
  // before that session's earlier WAL-less ones (the store flushes first),
  // so a crash leaves every session at a checkpoint, as ever.
  // UINT64_MAX: always the WAL. Default: 1 MiB.
  uint64_t wal_max_kv_bytes = uint64_t{1} << 20;
};

// Counters since Open.
struct StoreStats {
  uint64_t full_checkpoints = 0;
  uint64_t delta_checkpoints = 0;
  uint64_t full_bytes_written = 0;
  uint64_t delta_bytes_written = 0;
  uint64_t compactions = 0;
  uint64_t compaction_bytes_written = 0;
  uint64_t compaction_errors = 0;
  uint64_t loads = 0;
  uint64_t load_bytes_read = 0;
};

class RocksDbSessionStore final : public SessionStore {
 public:
  static constexpr std::string_view kMetaColumnFamily = "meta";
  static constexpr std::string_view kKvColumnFamily = "kv";
  static constexpr std::string_view kStoreMarkerKey = "sinkserve.store";
  // Layout version of the store (key scheme, column families).
  static constexpr uint32_t kStoreVersion = 1;

  // Opens or creates the store in `dir`. NOT_FOUND for a missing directory
  // without create_if_missing; FAILED_PRECONDITION for a directory holding
  // another database or a newer store; PERMISSION_DENIED / UNAVAILABLE when
  // the file system refuses.
  static absl::StatusOr<std::unique_ptr<RocksDbSessionStore>> Open(
      const std::string& dir, const RocksDbSessionStoreOptions& options = {});

  // Waits for a running compaction, drops queued ones (the chains they would
  // fold stay valid) and closes the database.
  ~RocksDbSessionStore() override;

  absl::StatusOr<CheckpointResult> Put(const SessionState& state) override;
  absl::StatusOr<CheckpointResult> Append(std::string_view id,
                                          uint64_t base_version,
                                          const SessionDelta& delta) override;
  absl::StatusOr<LoadedSession> Load(
      std::string_view id, std::string_view model_fingerprint) const override;
  absl::StatusOr<bool> Exists(std::string_view id) const override;
  absl::StatusOr<SessionInfo> Info(std::string_view id) const override;
  absl::StatusOr<ListPage> List(const ListOptions& options) const override;
  absl::Status Delete(std::string_view id) override;
  absl::StatusOr<LoadedSession> LoadMetadata(std::string_view id,
                                             std::string_view model_fingerprint) const override;
  absl::StatusOr<VerifyReport> Verify() const override;

  // Folds the session's chain into one full record now. OK if there is
  // nothing to fold or the session changed meanwhile (a Put or Delete won).
  absl::Status Compact(std::string_view id);
  // Blocks until every background compaction queued so far has run.
  void WaitForCompactions();

  // Writes the memtables out (K/V to blob files) and waits for it, so the
  // write-ahead log holds nothing to replay: before a planned shutdown (a
  // faster next open) and in benchmarks (no flush running behind the next
  // measurement). Not needed for durability.
  absl::Status Flush();

  // With `sync` off: fsyncs the write-ahead log, so every write that has
  // returned survives power loss. A no-op cost when nothing is unsynced.
  absl::Status Sync() override;

  // An openable, consistent copy of the whole store in `dir`, which must not
  // exist (RocksDB checkpoint: files are hard-linked where possible).
  absl::Status Backup(const std::string& dir) const;

  StoreStats stats() const;
  const std::string& dir() const { return dir_; }

  // The key scheme, for tools and tests that look at the raw database.
  static std::string MetaKey(std::string_view id) { return std::string(id); }
  static std::string RecordKey(std::string_view id, uint64_t seq,
                               uint32_t part);

 private:
  RocksDbSessionStore(std::string dir, RocksDbSessionStoreOptions options);
  absl::Status OpenDb();
  records::RecordDb records() const;
  // Load and LoadMetadata: the chain read with or without K/V rows.
  absl::StatusOr<LoadedSession> LoadChain(std::string_view id,
                                          std::string_view model_fingerprint,
                                          bool with_kv) const;

  absl::Status CheckWritable() const;
  // Writes `batch`; `bytes` gets its size. Resumes a stopped database first,
  // and once more (writing the batch again) when this write stopped it.
  // Writes `batch` for session `id` ("" for none), through the WAL or not
  // (`kv_bytes` against wal_max_kv_bytes), in the order the flush rules
  // above need.
  absl::Status WriteFor(std::string_view id, uint64_t kv_bytes, rocksdb::WriteBatch* batch,
                        bool sync, uint64_t* bytes);
  // Flushes every memtable (all column families at once) and records what
  // WAL-less writes it made durable.
  absl::Status FlushWalLess();
  absl::Status Write(rocksdb::WriteBatch* batch, bool sync, uint64_t* bytes,
                     bool wal = true) const;
  // True when a write-stopping error happened since the last DB::Resume that
  // succeeded.
  bool Stopped() const;
  // DB::Resume if Stopped().
  rocksdb::Status ResumeIfStopped() const;
  absl::Mutex& LockFor(std::string_view id) const;
  void EnqueueCompaction(std::string_view id);
  void CompactionLoop();
  // records::FromRocks for this store.
  absl::Status FromRocks(const rocksdb::Status& status,
                         std::string_view what) const;

  const std::string dir_;
  const RocksDbSessionStoreOptions options_;
  std::unique_ptr<rocksdb::DB> db_;
  rocksdb::ColumnFamilyHandle* meta_ = nullptr;  // owned by db_'s handles_
  rocksdb::ColumnFamilyHandle* kv_ = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  std::shared_ptr<records::WriteErrorTracker> errors_;
  // errors_->stopping_errors() as seen before the last DB::Resume that
  // succeeded: the errors already recovered from.
  mutable std::atomic<uint64_t> resumed_errors_{0};
  // WAL-less writes: a counter bumped after each one, the highest value a
  // finished flush covers, and per session the value of its newest WAL-less
  // write not yet known flushed.
  std::atomic<uint64_t> walless_writes_{0};
  std::atomic<uint64_t> walless_flushed_{0};
  absl::Mutex walless_mu_;
  std::map<std::string, uint64_t, std::less<>> walless_pending_ ABSL_GUARDED_BY(walless_mu_);

  // Writers of one session serialize on its stripe.
  mutable std::array<absl::Mutex, 64> stripes_;

  absl::Mutex queue_mu_;
  absl::CondVar queue_cv_;
  std::deque<std::string> queue_ ABSL_GUARDED_BY(queue_mu_);
  std::set<std::string> queued_ ABSL_GUARDED_BY(queue_mu_);
  bool compacting_ ABSL_GUARDED_BY(queue_mu_) = false;
  std::string compacting_id_ ABSL_GUARDED_BY(queue_mu_);
  bool stop_ ABSL_GUARDED_BY(queue_mu_) = false;
  std::thread compactor_;

  struct Counters {
    std::atomic<uint64_t> full_checkpoints{0};
    std::atomic<uint64_t> delta_checkpoints{0};
    std::atomic<uint64_t> full_bytes_written{0};
    std::atomic<uint64_t> delta_bytes_written{0};
    std::atomic<uint64_t> compactions{0};
    std::atomic<uint64_t> compaction_bytes_written{0};
    std::atomic<uint64_t> compaction_errors{0};
    std::atomic<uint64_t> loads{0};
    std::atomic<uint64_t> load_bytes_read{0};
  };
  mutable Counters counters_;
};

}  // namespace sinkserve::memory

#endif  // SINKSERVE_MEMORY_ROCKSDB_SESSION_STORE_H_
