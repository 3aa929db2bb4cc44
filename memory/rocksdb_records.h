// How RocksDbSessionStore lays sessions out in RocksDB, and reading them back:
// the key scheme, status mapping, record-chain replay and whole-store
// verification. Internal to the store (and its tests); see
// rocksdb_session_store.h for the layout and SNAPSHOT_FORMAT.md for values.
#ifndef SINKSERVE_MEMORY_ROCKSDB_RECORDS_H_
#define SINKSERVE_MEMORY_ROCKSDB_RECORDS_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "memory/rocksdb_session_store.h"
#include "memory/session_state.h"
#include "memory/session_store.h"
#include "memory/snapshot_format.h"
#include "rocksdb/db.h"
#include "rocksdb/listener.h"
#include "rocksdb/slice.h"
#include "rocksdb/write_batch.h"

namespace sinkserve::memory::records {

// Bytes to reserve for a batch carrying `kv_bytes` of rows: the rows, their
// chunk keys and framing, the record and header (a few KB).
inline size_t BatchReserve(size_t kv_bytes) { return kv_bytes + (size_t{64} << 10); }


inline rocksdb::Slice Rs(std::string_view s) { return {s.data(), s.size()}; }
inline std::string_view Std(const rocksdb::Slice& s) {
  return {s.data(), s.size()};
}

// The open database as the functions below see it.
struct RecordDb {
  rocksdb::DB* db = nullptr;
  rocksdb::ColumnFamilyHandle* meta = nullptr;
  rocksdb::ColumnFamilyHandle* kv = nullptr;
  // The store's directory, for messages.
  std::string_view dir;
};

// Counts the background errors that stop writes (RocksDB's "hard" errors:
// a WAL append or a flush that hit a full disk, ...) and turns RocksDB's own
// recovery from them off. That recovery waits until the disk has a whole
// write buffer free (64 MiB by default) besides what it needs, polls every
// 5 s, and meanwhile answers DB::Resume with Busy: a store on a disk that
// stays nearly full never came back without a restart. The store calls
// DB::Resume itself instead, before its next write (see
// RocksDbSessionStore::Write).
class WriteErrorTracker : public rocksdb::EventListener {
 public:
  void OnBackgroundError(rocksdb::BackgroundErrorReason reason,
                         rocksdb::Status* bg_error) override;
  void OnErrorRecoveryBegin(rocksdb::BackgroundErrorReason reason,
                            rocksdb::Status bg_error,
                            bool* auto_recovery) override;
  // Hard (or worse) errors since the database was opened; a caller that saw
  // this count before a successful DB::Resume has cleared those.
  uint64_t stopping_errors() const {
    return stopping_errors_.load(std::memory_order_acquire);
  }

 private:
  std::atomic<uint64_t> stopping_errors_{0};
};

// Opens (creating if allowed) the store's database in the existing directory
// `dir` with its column families (default, meta, kv; kv with BlobDB), checks
// or writes the store marker, and refuses foreign databases. *db is set, and
// owned by the caller, as soon as RocksDB opened it, also when a later check
// fails. `tracker` (may be null) is registered as a listener.
absl::Status OpenDatabase(const std::string& dir,
                          const RocksDbSessionStoreOptions& options,
                          std::shared_ptr<WriteErrorTracker> tracker,
                          rocksdb::DB** db,
                          std::vector<rocksdb::ColumnFamilyHandle*>* handles);

// Maps a RocksDB status to an absl code (Corruption -> DATA_LOSS, no space ->
// RESOURCE_EXHAUSTED, access refused -> PERMISSION_DENIED, other I/O errors ->
// UNAVAILABLE, ...), naming the store and `what` in the message.
absl::Status FromRocks(const rocksdb::Status& status, std::string_view dir,
                       std::string_view what);

// "kv" keys: id 0x00 seq (8 bytes BE) part (4 bytes BE). All keys of `id` lie
// in [PrefixBegin(id), PrefixEnd(id)): ids hold no byte below 0x21, so no
// other id's keys fall in between.
std::string RecordKey(std::string_view id, uint64_t seq, uint32_t part);
std::string PrefixBegin(std::string_view id);
std::string PrefixEnd(std::string_view id);
// "id/seq/part" for messages; the raw bytes escaped if not a record key.
std::string DescribeKey(std::string_view key);

// Releases a RocksDB snapshot when it goes out of scope.
class SnapshotHolder {
 public:
  explicit SnapshotHolder(rocksdb::DB* db) : db_(db), s_(db->GetSnapshot()) {}
  ~SnapshotHolder() { db_->ReleaseSnapshot(s_); }
  SnapshotHolder(const SnapshotHolder&) = delete;
  SnapshotHolder& operator=(const SnapshotHolder&) = delete;
  const rocksdb::Snapshot* get() const { return s_; }

 private:
  rocksdb::DB* db_;
  const rocksdb::Snapshot* s_;
};

// The header of `id` at `snapshot` (nullptr: latest); nullopt if absent,
// DATA_LOSS if unreadable.
absl::StatusOr<std::optional<snapshot::SessionHeader>> ReadHeader(
    const RecordDb& db, std::string_view id, const rocksdb::Snapshot* snapshot);

// How much of a record chain ReadChain reads.
enum class ChainRead {
  // Record bodies only, by point reads (an iterator would fetch every K/V
  // blob too): enough to validate a delta on Append.
  kMetadata,
  // Bodies and every K/V chunk's checksum, keeping no rows: Verify.
  kVerify,
  // Everything: Load and Compact.
  kFull,
};

struct ChainResult {
  SessionState state;  // rows only with kFull
  int64_t records = 0;
  uint64_t bytes_read = 0;
};

// Replays the chain `header` describes (full state at base_seq, deltas up to
// the version), checking every record it reads and that the result agrees
// with the header. DATA_LOSS names the session and record at fault.
absl::StatusOr<ChainResult> ReadChain(const RecordDb& db,
                                      const snapshot::SessionHeader& header,
                                      const rocksdb::Snapshot* snapshot,
                                      ChainRead mode);

// Adds record `record` (part 0) and the K/V rows `kv` in chunks of at most
// `chunk_bytes` (parts 1..n) at `seq` to `batch`; the rows are not copied
// until the batch itself takes them.
absl::Status AddRecord(const RecordDb& db, rocksdb::WriteBatch* batch,
                       std::string_view id, uint64_t seq,
                       const std::string& record, std::string_view kv,
                       uint64_t chunk_bytes);

// Checks every session's chain at `snapshot` and looks for records outside
// every chain; reports all bad sessions.
absl::StatusOr<VerifyReport> VerifyAll(const RecordDb& db,
                                       const rocksdb::Snapshot* snapshot);

}  // namespace sinkserve::memory::records

#endif  // SINKSERVE_MEMORY_ROCKSDB_RECORDS_H_
