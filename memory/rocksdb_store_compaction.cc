// Background folds of RocksDbSessionStore: a chain of deltas rewritten as one
// full state once it passes the threshold, off the checkpoint path.
#include "memory/rocksdb_session_store.h"

#include <string>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "memory/rocksdb_records.h"
#include "memory/snapshot_format.h"
#include "memory/status_macros.h"
#include "rocksdb/db.h"
#include "rocksdb/write_batch.h"

namespace sinkserve::memory {
namespace snap = ::sinkserve::memory::snapshot;
using records::BatchReserve;
using records::ChainRead;
using records::ChainResult;
using records::ReadChain;
using records::ReadHeader;
using records::Rs;
using records::SnapshotHolder;

absl::Status RocksDbSessionStore::Compact(std::string_view id) {
  SINKSERVE_RETURN_IF_ERROR(CheckWritable());
  SINKSERVE_RETURN_IF_ERROR(ValidateSessionId(id));
  // Read without the session's lock: a big chain takes a while and Appends
  // may go on meanwhile; they only add records after the ones folded here.
  SnapshotHolder snapshot(db_.get());
  SINKSERVE_ASSIGN_OR_RETURN(std::optional<snap::SessionHeader> header,
                             ReadHeader(records(), id, snapshot.get()));
  if (!header || header->info.deltas == 0) return absl::OkStatus();
  SINKSERVE_ASSIGN_OR_RETURN(
      ChainResult chain,
      ReadChain(records(), *header, snapshot.get(), ChainRead::kFull));
  const uint64_t base = header->base_seq;
  const uint64_t last = header->info.version;

  absl::MutexLock lock(&LockFor(id));
  SINKSERVE_ASSIGN_OR_RETURN(std::optional<snap::SessionHeader> now,
                             ReadHeader(records(), id, nullptr));
  if (!now || now->incarnation != header->incarnation ||
      now->base_seq != base) {
    return absl::OkStatus();  // a Put or Delete superseded what we read
  }
  // The full state of `last` replaces records base..last under the same key
  // as `last`; later deltas stay on top of it. Within a batch later entries
  // win, so the range deletion does not hide the new record.
  rocksdb::WriteBatch batch(BatchReserve(chain.state.kv.size()));
  SINKSERVE_RETURN_IF_ERROR(
      FromRocks(batch.DeleteRange(kv_, Rs(RecordKey(id, base, 0)),
                                  Rs(RecordKey(id, last + 1, 0))),
                "batching"));
  const std::string record = snap::EncodeFullState(
      chain.state, last,
      snap::KvChunkCount(chain.state.kv.size(), options_.kv_chunk_bytes));
  SINKSERVE_RETURN_IF_ERROR(AddRecord(records(), &batch, id, last, record,
                                      chain.state.kv, options_.kv_chunk_bytes));
  now->base_seq = last;
  SINKSERVE_RETURN_IF_ERROR(FromRocks(
      batch.Put(meta_, Rs(MetaKey(id)), snap::EncodeSessionHeader(*now)),
      "batching"));
  // No fsync needed: the fold changes no state, and the WAL keeps batches in
  // order, so a later synced checkpoint makes it durable too.
  uint64_t bytes = 0;
  SINKSERVE_RETURN_IF_ERROR(WriteFor(id, chain.state.kv.size(), &batch, /*sync=*/false, &bytes));
  counters_.compactions.fetch_add(1, std::memory_order_relaxed);
  counters_.compaction_bytes_written.fetch_add(bytes,
                                               std::memory_order_relaxed);
  return absl::OkStatus();
}

void RocksDbSessionStore::EnqueueCompaction(std::string_view id) {
  absl::MutexLock lock(&queue_mu_);
  // A fold in progress may miss the newest deltas; they are folded when the
  // threshold is crossed again, not by a second fold right behind this one.
  if (id == compacting_id_) return;
  if (queued_.insert(std::string(id)).second) {
    queue_.push_back(std::string(id));
    queue_cv_.SignalAll();
  }
}

void RocksDbSessionStore::CompactionLoop() {
  while (true) {
    std::string id;
    {
      absl::MutexLock lock(&queue_mu_);
      while (!stop_ && queue_.empty()) queue_cv_.Wait(&queue_mu_);
      if (stop_) return;
      id = std::move(queue_.front());
      queue_.pop_front();
      queued_.erase(id);
      compacting_ = true;
      compacting_id_ = id;
    }
    bool again = false;
    if (Compact(id).ok()) {
      // Appends during a long fold skip enqueuing (see EnqueueCompaction);
      // if they piled up past the threshold, fold once more.
      absl::StatusOr<SessionInfo> info = Info(id);
      again = info.ok() && info->deltas >= options_.compact_after_deltas;
    } else {
      counters_.compaction_errors.fetch_add(1, std::memory_order_relaxed);
    }
    absl::MutexLock lock(&queue_mu_);
    compacting_ = false;
    compacting_id_.clear();
    if (again && queued_.insert(id).second) queue_.push_back(id);
    queue_cv_.SignalAll();
  }
}

void RocksDbSessionStore::WaitForCompactions() {
  absl::MutexLock lock(&queue_mu_);
  while (!stop_ && compactor_.joinable() && (!queue_.empty() || compacting_)) {
    queue_cv_.Wait(&queue_mu_);
  }
}

}  // namespace sinkserve::memory
