// Durability of RocksDbSessionStore's writes: the WAL or WAL-less batches
// (flushed together), resuming after a full disk, Sync, Flush and backups
// (see "Durability" in SNAPSHOT_FORMAT.md).
#include "memory/rocksdb_session_store.h"

#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "memory/rocksdb_records.h"
#include "memory/snapshot_format.h"
#include "memory/status_macros.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "rocksdb/utilities/checkpoint.h"
#include "rocksdb/write_batch.h"

namespace sinkserve::memory {
namespace {

// Why the database still takes no writes, from DB::Resume's answer.
std::string CannotResumeHint(const rocksdb::Status& resumed) {
  // RocksDB resumes from nothing worse than a hard error (ENOSPC); other
  // I/O errors in the WAL (EFBIG, EDQUOT, EIO) are fatal to the open
  // database.
  if (resumed.severity() >= rocksdb::Status::Severity::kFatalError) {
    return " (it cannot resume from this error: reopen the store, e.g. "
           "restart the server, once the cause is fixed)";
  }
  return absl::StrCat(
      " (writes resume by themselves once the disk has room; resuming now: ",
      resumed.ToString(), ")");
}

}  // namespace

bool RocksDbSessionStore::Stopped() const {
  return errors_->stopping_errors() != resumed_errors_.load();
}

rocksdb::Status RocksDbSessionStore::ResumeIfStopped() const {
  const uint64_t errors = errors_->stopping_errors();
  if (errors == resumed_errors_.load()) return rocksdb::Status::OK();
  // Flushes the memtables to new files and starts a new WAL, so it succeeds
  // only once the disk has room for them.
  rocksdb::Status s = db_->Resume();
  if (!s.ok()) return s;
  // Errors after `errors` (another thread's) stay to be resumed from.
  uint64_t seen = resumed_errors_.load();
  while (seen < errors && !resumed_errors_.compare_exchange_weak(seen, errors)) {
  }
  return s;
}

absl::Status RocksDbSessionStore::FlushWalLess() {
  const uint64_t covered = walless_writes_.load();
  rocksdb::FlushOptions fo;
  fo.wait = true;
  // atomic_flush: every column family's memtables at once, so a header
  // (meta) is never durable without the record (kv) it points at.
  SINKSERVE_RETURN_IF_ERROR(FromRocks(db_->Flush(fo, handles_), "flush of WAL-less checkpoints"));
  uint64_t seen = walless_flushed_.load();
  while (seen < covered && !walless_flushed_.compare_exchange_weak(seen, covered)) {
  }
  return absl::OkStatus();
}

absl::Status RocksDbSessionStore::WriteFor(std::string_view id, uint64_t kv_bytes,
                                           rocksdb::WriteBatch* batch, bool sync,
                                           uint64_t* bytes) {
  const bool wal = kv_bytes <= options_.wal_max_kv_bytes;
  if (!id.empty()) {
    // A WAL-logged write must not outlive (in the WAL, after a crash) a
    // WAL-less one of the same session that it builds on: flush that first.
    // Rare: the checkpoint pipeline syncs between a session's checkpoints;
    // background folds are what meet this.
    bool flush = false;
    {
      absl::MutexLock lock(&walless_mu_);
      auto it = walless_pending_.find(id);
      if (it != walless_pending_.end()) {
        if (it->second <= walless_flushed_.load()) {
          walless_pending_.erase(it);
        } else {
          flush = wal;
        }
      }
    }
    if (flush) SINKSERVE_RETURN_IF_ERROR(FlushWalLess());
  }
  if (wal) return Write(batch, sync, bytes);
  SINKSERVE_RETURN_IF_ERROR(Write(batch, /*sync=*/false, bytes, /*wal=*/false));
  const uint64_t n = walless_writes_.fetch_add(1) + 1;
  if (!id.empty()) {
    absl::MutexLock lock(&walless_mu_);
    walless_pending_[std::string(id)] = n;
  }
  return sync ? FlushWalLess() : absl::OkStatus();
}

absl::Status RocksDbSessionStore::Write(rocksdb::WriteBatch* batch, bool sync,
                                        uint64_t* bytes, bool wal) const {
  rocksdb::WriteOptions wo;
  wo.sync = sync && wal;
  wo.disableWAL = !wal;
  *bytes = batch->GetDataSize();
  if (rocksdb::Status resumed = ResumeIfStopped(); !resumed.ok()) {
    return FromRocks(resumed, absl::StrCat("write refused: the database "
                                           "stopped after an earlier write "
                                           "error",
                                           CannotResumeHint(resumed)));
  }
  rocksdb::Status s = db_->Write(wo, batch);
  if (s.ok() || !Stopped()) return FromRocks(s, "write");
  // This write stopped the database. RocksDB put nothing of a failed batch
  // into the memtables, and a batch replayed from the old WAL would only
  // repeat the same puts and deletions, so writing it again is safe.
  const rocksdb::Status resumed = ResumeIfStopped();
  if (!resumed.ok()) {
    return FromRocks(s, absl::StrCat("write", CannotResumeHint(resumed)));
  }
  return FromRocks(db_->Write(wo, batch), "write (after resuming)");
}

absl::Status RocksDbSessionStore::Sync() {
  SINKSERVE_RETURN_IF_ERROR(CheckWritable());
  // A flush makes the WAL-logged writes before it durable too.
  if (walless_writes_.load() > walless_flushed_.load()) return FlushWalLess();
  return FromRocks(db_->SyncWAL(), "sync of the write-ahead log");
}

absl::Status RocksDbSessionStore::Flush() {
  SINKSERVE_RETURN_IF_ERROR(CheckWritable());
  SINKSERVE_RETURN_IF_ERROR(FromRocks(ResumeIfStopped(), "flush (resuming)"));
  rocksdb::FlushOptions fo;
  fo.wait = true;
  return FromRocks(db_->Flush(fo, handles_), "flush");
}

absl::Status RocksDbSessionStore::Backup(const std::string& dir) const {
  rocksdb::Checkpoint* raw = nullptr;
  SINKSERVE_RETURN_IF_ERROR(
      FromRocks(rocksdb::Checkpoint::Create(db_.get(), &raw), "backup"));
  std::unique_ptr<rocksdb::Checkpoint> checkpoint(raw);
  return FromRocks(checkpoint->CreateCheckpoint(dir),
                   absl::StrCat("backup to ", dir));
}

}  // namespace sinkserve::memory
