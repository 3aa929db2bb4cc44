#include "memory/rados_session_store.h"

#include <rados/librados.hpp>

#include <utility>
#include "memory/rados_store_internal.h"
#include "memory/status_macros.h"

namespace sinkserve::memory {

// This store's own helpers (rados_store_internal.h), in every one of its files.
using namespace rados_internal;  // NOLINT(build/namespaces)

absl::Status RadosSessionStore::Compact(std::string_view id) {
  SINKSERVE_RETURN_IF_ERROR(ValidateSessionId(id));
  // Read without the session's lock: a big chain takes a while.
  SINKSERVE_ASSIGN_OR_RETURN(Meta meta, ReadMeta(id, /*with_records=*/true));
  if (!meta.has_session || !meta.header_status.ok() ||
      meta.header.info.deltas == 0) {
    return absl::OkStatus();
  }
  SINKSERVE_ASSIGN_OR_RETURN(Chain chain, ReadChain(meta, ChainRead::kFull));
  const uint64_t last = meta.header.info.version;
  // A session this server no longer holds is folded by its owner.
  absl::StatusOr<uint64_t> fence = FenceFor(id);
  if (!fence.ok()) return absl::OkStatus();
  absl::MutexLock lock(&LockFor(id));
  const uint32_t chunks =
      snap::KvChunkCount(chain.state.kv.size(), options_.kv_chunk_bytes);
  const std::string record = snap::EncodeFullState(chain.state, last, chunks);
  uint64_t bytes = 0;
  SINKSERVE_ASSIGN_OR_RETURN(
      std::string token, WriteRecord(id, last, record, chain.state.kv, &bytes));
  snap::SessionHeader header = meta.header;
  header.base_seq = last;
  header.info.deltas = 0;
  // The fold commits only if nothing moved the session since it was read;
  // else a later threshold crossing folds again.
  librados::ObjectWriteOperation op;
  Guard(&op, *fence, last);
  op.write_full(Bl(snap::EncodeSessionHeader(header)));
  op.omap_clear();
  op.omap_set({{SeqKey(last), Bl(RecordRef(token, chunks))}});
  const int r = cluster_->io.operate(MetaObject(id), &op);
  if (r < 0) {
    RemoveRecords(id, token, chunks);
    if (r == -ECANCELED || r == -ENOENT) return absl::OkStatus();
    return RADOS_ERROR(r, "folding session ", Sv(id));
  }
  for (const auto& [seq, ref] : meta.records) {
    RemoveRecords(id, ref.token, ref.chunks);
  }
  counters_.compactions.fetch_add(1, std::memory_order_relaxed);
  return absl::OkStatus();
}

void RadosSessionStore::EnqueueCompaction(std::string_view id) {
  absl::MutexLock lock(&queue_mu_);
  if (queued_.insert(std::string(id)).second) {
    queue_.push_back(std::string(id));
    queue_cv_.SignalAll();
  }
}

void RadosSessionStore::CompactionLoop() {
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
    }
    if (!Compact(id).ok()) {
      counters_.compaction_errors.fetch_add(1, std::memory_order_relaxed);
    }
    absl::MutexLock lock(&queue_mu_);
    compacting_ = false;
    queue_cv_.SignalAll();
  }
}

void RadosSessionStore::WaitForCompactions() {
  absl::MutexLock lock(&queue_mu_);
  while (!stop_ && compactor_.joinable() && (!queue_.empty() || compacting_)) {
    queue_cv_.Wait(&queue_mu_);
  }
}

}  // namespace sinkserve::memory
