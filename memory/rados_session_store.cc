#include "memory/rados_session_store.h"

#include <rados/librados.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <random>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "memory/rados_cluster.h"
#include "memory/session_leases.h"
#include "memory/rados_store_internal.h"
#include "memory/snapshot_format.h"
#include "memory/status_macros.h"

namespace sinkserve::memory {

// This store's own helpers (rados_store_internal.h), in every one of its files.
using namespace rados_internal;  // NOLINT(build/namespaces)

std::string RadosSessionStore::MetaObject(std::string_view id) {
  return absl::StrCat("s.", Sv(id));
}

std::string RadosSessionStore::RecordObject(std::string_view id,
                                            std::string_view token,
                                            uint32_t part) {
  return absl::StrCat("r.", Sv(id), ".", Sv(token), ".", part);
}

RadosSessionStore::RadosSessionStore(RadosSessionStoreOptions options)
    : options_(std::move(options)),
      cluster_(std::make_unique<Cluster>()),
      where_(absl::StrCat("rados://", options_.pool,
                          options_.rados_namespace.empty() ? "" : "/",
                          options_.rados_namespace)) {}

absl::StatusOr<std::unique_ptr<RadosSessionStore>> RadosSessionStore::Open(
    const RadosSessionStoreOptions& options) {
  if (options.compact_after_deltas < 0 || options.kv_chunk_bytes < 4096 ||
      options.kv_chunk_bytes > (uint64_t{64} << 20) || options.pool.empty() ||
      options.op_timeout < absl::Seconds(1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rados session store options: pool '", options.pool,
        "' must be named, compact_after_deltas ", options.compact_after_deltas,
        " >= 0, kv_chunk_bytes ", options.kv_chunk_bytes,
        " in [4 KiB, 64 MiB], op_timeout ",
        absl::FormatDuration(options.op_timeout), " >= 1 s"));
  }
  std::unique_ptr<RadosSessionStore> store(new RadosSessionStore(options));
  SINKSERVE_RETURN_IF_ERROR(store->Connect());
  if (options.background_compaction && options.compact_after_deltas > 0) {
    RadosSessionStore* s = store.get();
    store->compactor_ = std::thread([s] { s->CompactionLoop(); });
  }
  return store;
}

absl::Status RadosSessionStore::Connect() {
  librados::Rados& rados = cluster_->rados;
  auto fail = [&](int r, std::string_view what) {
    return absl::Status(CodeOf(r), absl::StrCat("session store ", where_, ": ",
                                                Sv(what), ": ",
                                                std::strerror(-r)));
  };
  int r = rados.init(options_.client_id.c_str());
  if (r < 0) return fail(r, "librados init");
  r = rados.conf_read_file(
      options_.conf_path.empty() ? nullptr : options_.conf_path.c_str());
  if (r < 0) {
    return fail(r, absl::StrCat("reading ceph.conf '", options_.conf_path,
                                "'"));
  }
  const std::string secs =
      absl::StrCat(std::max<int64_t>(1, absl::ToInt64Seconds(options_.op_timeout)));
  // Without these a request to a cluster that is down waits forever (OSD and
  // mon ops) or for 5 minutes (connecting).
  for (const char* key :
       {"rados_osd_op_timeout", "rados_mon_op_timeout", "client_mount_timeout"}) {
    r = rados.conf_set(key, secs.c_str());
    if (r < 0) return fail(r, absl::StrCat("setting ", key));
  }
  r = rados.connect();
  if (r < 0) {
    return fail(r, absl::StrCat("connecting to the cluster of '",
                                options_.conf_path, "'"));
  }
  r = rados.ioctx_create(options_.pool.c_str(), cluster_->io);
  if (r == -ENOENT) {
    return absl::NotFoundError(absl::StrCat("session store ", where_, ": no pool '",
                                            options_.pool, "' in the cluster"));
  }
  if (r < 0) return fail(r, "opening the pool");
  cluster_->io.set_namespace(options_.rados_namespace);

  // The store marker: refuse a layout newer than this build.
  const std::string marker(kMarkerObject);
  for (int attempt = 0; attempt < 2; ++attempt) {
    bufferlist bl;
    r = cluster_->io.read(marker, bl, 0, 0);
    if (r >= 0) {
      absl::StatusOr<uint32_t> version = snap::DecodeStoreMarker(View(bl));
      if (!version.ok()) {
        return snap::Annotate(version.status(),
                              absl::StrCat("session store ", where_, " marker"));
      }
      if (*version > kStoreVersion) {
        return absl::FailedPreconditionError(absl::StrCat(
            "session store ", where_, " has layout version ", *version,
            "; this build handles up to ", kStoreVersion));
      }
      return absl::OkStatus();
    }
    if (r != -ENOENT) return fail(r, "reading the store marker");
    librados::ObjectWriteOperation op;
    op.create(/*exclusive=*/true);  // another server may be creating it too
    op.write_full(Bl(snap::EncodeStoreMarker(kStoreVersion)));
    r = cluster_->io.operate(marker, &op);
    if (r >= 0) return absl::OkStatus();
    if (r != -EEXIST) return fail(r, "writing the store marker");
  }
  return fail(-EAGAIN, "store marker");
}

RadosSessionStore::~RadosSessionStore() {
  {
    absl::MutexLock lock(&queue_mu_);
    stop_ = true;
    queue_cv_.SignalAll();
  }
  if (compactor_.joinable()) compactor_.join();
}

absl::Mutex& RadosSessionStore::LockFor(std::string_view id) const {
  return stripes_[std::hash<std::string_view>()(id) % stripes_.size()];
}

absl::StatusOr<CheckpointResult> RadosSessionStore::Put(
    const SessionState& state) {
  const absl::Time start = absl::Now();
  SINKSERVE_RETURN_IF_ERROR(state.Validate());
  const std::string& id = state.id;
  SINKSERVE_ASSIGN_OR_RETURN(const uint64_t fence, FenceFor(id));
  absl::MutexLock lock(&LockFor(id));
  for (int attempt = 0;; ++attempt) {
    SINKSERVE_ASSIGN_OR_RETURN(Meta old, ReadMeta(id, /*with_records=*/true));
    if (fence != 0 && old.epoch != fence) {
      return Refused(id, "put", fence, old.version);
    }
    // A corrupt header must not block replacing the session: its version
    // xattr still orders the new checkpoint after it.
    const bool had = old.version != 0;
    // A new session's versions start at the current time in microseconds,
    // so a session deleted and created again never repeats a version.
    const uint64_t seq =
        had ? old.version + 1
            : static_cast<uint64_t>(
                  std::max<int64_t>(1, absl::ToUnixMicros(absl::Now())));
    const uint64_t incarnation =
        old.has_session && old.header_status.ok() ? old.header.incarnation
                                                  : RandomU64();
    CheckpointResult result;
    if (!old.has_session) {
      // Listed before it exists, so a listing never misses a session; an
      // entry without a session is skipped by List.
      librados::ObjectWriteOperation index;
      index.omap_set({{id, bufferlist()}});
      const int r = cluster_->io.operate(std::string(kIndexObject), &index);
      if (r < 0) return RADOS_ERROR(r, "indexing session ", id);
    }
    const uint32_t chunks =
        snap::KvChunkCount(state.kv.size(), options_.kv_chunk_bytes);
    const std::string record = snap::EncodeFullState(state, seq, chunks);
    SINKSERVE_ASSIGN_OR_RETURN(
        std::string token,
        WriteRecord(id, seq, record, state.kv, &result.bytes_written));

    const std::string header =
        snap::EncodeSessionHeader(snap::HeaderOf(state, incarnation, seq, seq));
    librados::ObjectWriteOperation op;
    if (old.exists) {
      Guard(&op, fence, old.version);
    } else {
      // No one else created it meanwhile. cmpxattr fails on a missing
      // xattr, so every meta object carries both from its creation.
      op.create(/*exclusive=*/true);
      op.setxattr(kEpochXattr, U64Bl(0));
    }
    op.write_full(Bl(header));
    op.setxattr(kVersionXattr, U64Bl(seq));
    op.omap_clear();
    op.omap_set({{SeqKey(seq), Bl(RecordRef(token, chunks))}});
    result.bytes_written += header.size();
    const int r = cluster_->io.operate(MetaObject(id), &op);
    if (r < 0) {
      RemoveRecords(id, token, chunks);
      const bool raced = r == -ECANCELED || r == -EEXIST || r == -ENOENT;
      if (!raced) return RADOS_ERROR(r, "committing session ", id);
      if (attempt + 1 >= kPutAttempts) {
        return Refused(id, "put", fence, old.version);
      }
      if (fence != 0) {
        absl::Status why = Refused(id, "put", fence, old.version);
        if (IsFenced(why)) return why;
      }
      continue;  // another writer moved it: replace what it wrote
    }
    for (const auto& [old_seq, ref] : old.records) {
      RemoveRecords(id, ref.token, ref.chunks);
    }
    result.version = seq;
    result.full = true;
    result.latency = absl::Now() - start;
    counters_.full_checkpoints.fetch_add(1, std::memory_order_relaxed);
    return result;
  }
}

absl::StatusOr<CheckpointResult> RadosSessionStore::Append(
    std::string_view id, uint64_t base_version, const SessionDelta& delta) {
  const absl::Time start = absl::Now();
  SINKSERVE_RETURN_IF_ERROR(ValidateSessionId(id));
  SINKSERVE_ASSIGN_OR_RETURN(const uint64_t fence, FenceFor(id));
  CheckpointResult result;
  bool fold = false;
  {
    absl::MutexLock lock(&LockFor(id));
    SINKSERVE_ASSIGN_OR_RETURN(Meta meta, ReadMeta(id, /*with_records=*/true));
    if (!meta.has_session) {
      return absl::NotFoundError(absl::StrCat(
          "append to session ", Sv(id), ": no such session (Put it first)"));
    }
    SINKSERVE_RETURN_IF_ERROR(meta.header_status);
    if (fence != 0 && meta.epoch != fence) {
      return Refused(id, "append", fence, base_version);
    }
    if (meta.version != base_version) {
      return absl::AbortedError(absl::StrCat(
          "append to session ", Sv(id), ": the delta was made against version ",
          base_version, " but the session is at version ", meta.version,
          "; load it again or write a full snapshot"));
    }
    // Validate the delta against the stored metadata, so that a bad delta is
    // refused now instead of making the session unloadable later.
    SINKSERVE_ASSIGN_OR_RETURN(Chain chain,
                               ReadChain(meta, ChainRead::kMetadata));
    const int64_t cell_bytes = chain.state.kv_shape.cell_bytes();
    StateReplayer replayer(std::move(chain.state), /*with_kv=*/false);
    if (absl::Status s = replayer.Apply(delta, {}); !s.ok()) {
      return snap::Annotate(s, absl::StrCat("append to session ", Sv(id)));
    }
    if (static_cast<int64_t>(delta.kv.size()) !=
        delta.kv_cells() * cell_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "append to session ", Sv(id), ": kv holds ", delta.kv.size(),
          " bytes, ", delta.kv_cells(), " rewritten + added cells of ",
          cell_bytes, " need ", delta.kv_cells() * cell_bytes));
    }
    const SessionState next = std::move(replayer).Finish();
    const uint64_t seq = base_version + 1;
    const uint32_t chunks =
        snap::KvChunkCount(delta.kv.size(), options_.kv_chunk_bytes);
    const std::string record = snap::EncodeDelta(id, seq, delta, chunks);
    SINKSERVE_ASSIGN_OR_RETURN(
        std::string token,
        WriteRecord(id, seq, record, delta.kv, &result.bytes_written));
    const std::string header = snap::EncodeSessionHeader(snap::HeaderOf(
        next, meta.header.incarnation, meta.header.base_seq, seq));
    librados::ObjectWriteOperation op;
    Guard(&op, fence, base_version);
    op.write_full(Bl(header));
    op.setxattr(kVersionXattr, U64Bl(seq));
    op.omap_set({{SeqKey(seq), Bl(RecordRef(token, chunks))}});
    result.bytes_written += header.size();
    const int r = cluster_->io.operate(MetaObject(id), &op);
    if (r < 0) {
      RemoveRecords(id, token, chunks);
      if (r == -ECANCELED || r == -ENOENT) {
        return Refused(id, "append", fence, base_version);
      }
      return RADOS_ERROR(r, "committing session ", Sv(id));
    }
    result.version = seq;
    fold = options_.compact_after_deltas > 0 &&
           seq - meta.header.base_seq >=
               static_cast<uint64_t>(options_.compact_after_deltas);
  }
  counters_.delta_checkpoints.fetch_add(1, std::memory_order_relaxed);
  if (fold) {
    if (options_.background_compaction) {
      EnqueueCompaction(id);
    } else if (!Compact(id).ok()) {
      // The delta is stored; the chain just stays long until a fold works.
      counters_.compaction_errors.fetch_add(1, std::memory_order_relaxed);
    }
  }
  result.latency = absl::Now() - start;
  return result;
}

absl::StatusOr<LoadedSession> RadosSessionStore::Load(
    std::string_view id, std::string_view model_fingerprint) const {
  return LoadChain(id, model_fingerprint, /*with_kv=*/true);
}

absl::StatusOr<LoadedSession> RadosSessionStore::LoadMetadata(
    std::string_view id, std::string_view model_fingerprint) const {
  return LoadChain(id, model_fingerprint, /*with_kv=*/false);
}

absl::StatusOr<LoadedSession> RadosSessionStore::LoadChain(
    std::string_view id, std::string_view model_fingerprint,
    bool with_kv) const {
  SINKSERVE_RETURN_IF_ERROR(ValidateSessionId(id));
  if (model_fingerprint.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "load of session ", Sv(id),
        ": empty model fingerprint (pass SessionStore::kAnyModel to skip the "
        "check)"));
  }
  for (int attempt = 0;; ++attempt) {
    SINKSERVE_ASSIGN_OR_RETURN(Meta meta, ReadMeta(id, /*with_records=*/true));
    if (!meta.has_session) {
      return absl::NotFoundError(
          absl::StrCat("no session ", Sv(id), " in ", where_));
    }
    SINKSERVE_RETURN_IF_ERROR(meta.header_status);
    if (model_fingerprint != kAnyModel &&
        meta.header.info.model_fingerprint != model_fingerprint) {
      return absl::FailedPreconditionError(absl::StrCat(
          "session ", Sv(id), " was checkpointed with model '",
          meta.header.info.model_fingerprint, "' but this server runs model '",
          Sv(model_fingerprint), "'; its K/V cache is meaningless here"));
    }
    absl::StatusOr<Chain> chain =
        ReadChain(meta, with_kv ? ChainRead::kFull : ChainRead::kMetadata);
    if (!chain.ok()) {
      // A Put or fold that committed after we read the meta object removes
      // the records it superseded: read the new chain instead.
      if (absl::IsDataLoss(chain.status()) && attempt + 1 < kLoadAttempts) {
        absl::StatusOr<Meta> now = ReadMeta(id, /*with_records=*/false);
        if (now.ok() && (now->version != meta.version ||
                         now->header.base_seq != meta.header.base_seq ||
                         now->header.incarnation != meta.header.incarnation)) {
          continue;
        }
      }
      return chain.status();
    }
    LoadedSession loaded;
    loaded.state = std::move(chain->state);
    loaded.version = meta.header.info.version;
    loaded.records = chain->records;
    loaded.bytes_read = chain->bytes_read;
    return loaded;
  }
}

absl::StatusOr<bool> RadosSessionStore::Exists(std::string_view id) const {
  SINKSERVE_RETURN_IF_ERROR(ValidateSessionId(id));
  uint64_t size = 0;
  time_t mtime = 0;
  const int r = cluster_->io.stat(MetaObject(id), &size, &mtime);
  if (r == -ENOENT) return false;
  if (r < 0) return RADOS_ERROR(r, "lookup of ", Sv(id));
  return size > 0;  // an empty meta object only holds a claimed epoch
}

absl::StatusOr<SessionInfo> RadosSessionStore::Info(std::string_view id) const {
  SINKSERVE_RETURN_IF_ERROR(ValidateSessionId(id));
  SINKSERVE_ASSIGN_OR_RETURN(Meta meta, ReadMeta(id, /*with_records=*/false));
  if (!meta.has_session) {
    return absl::NotFoundError(
        absl::StrCat("no session ", Sv(id), " in ", where_));
  }
  SINKSERVE_RETURN_IF_ERROR(meta.header_status);
  return std::move(meta.header.info);
}

absl::StatusOr<ListPage> RadosSessionStore::List(
    const ListOptions& options) const {
  const int max = std::clamp(options.max_sessions, 1, kMaxListPage);
  ListPage page;
  std::string after = options.start_after;
  // Index entries of deleted sessions are skipped, so a page may need more
  // than one round of the index to fill.
  while (static_cast<int>(page.sessions.size() + page.bad.size()) < max) {
    librados::ObjectReadOperation op;
    std::map<std::string, bufferlist> ids;
    bool more = false;
    int omap_r = 0;
    const int want = max - static_cast<int>(page.sessions.size() + page.bad.size());
    op.omap_get_vals2(after, want, &ids, &more, &omap_r);
    const int r = cluster_->io.operate(std::string(kIndexObject), &op, nullptr);
    if (r == -ENOENT) break;  // no session was ever written
    if (r < 0) return RADOS_ERROR(r, "list");
    struct Read {
      std::string id;
      bufferlist bl;
      int r = 0;
      Completion c;
    };
    std::vector<std::unique_ptr<Read>> reads;
    for (const auto& [id, unused] : ids) {
      auto read = std::make_unique<Read>();
      read->id = id;
      read->r = cluster_->io.aio_read(MetaObject(id), read->c.c, &read->bl, 0, 0);
      reads.push_back(std::move(read));
    }
    for (auto& read : reads) {
      if (read->r >= 0) read->r = read->c.Wait();
      after = read->id;
      if (read->r == -ENOENT || (read->r >= 0 && read->bl.length() == 0)) {
        continue;
      }
      if (read->r < 0) return RADOS_ERROR(read->r, "list: reading ", read->id);
      absl::StatusOr<snap::SessionHeader> h =
          snap::DecodeSessionHeader(View(read->bl));
      if (h.ok() && h->info.id != read->id) {
        h = absl::DataLossError(
            absl::StrCat("header names session ", h->info.id));
      }
      if (h.ok()) {
        page.sessions.push_back(std::move(h->info));
      } else {
        page.bad.push_back(
            {read->id,
             snap::Annotate(h.status(),
                            absl::StrCat("session ", read->id, " header"))});
      }
    }
    if (!more) {
      after.clear();
      break;
    }
  }
  page.next_start_after = after;
  return page;
}

absl::Status RadosSessionStore::Delete(std::string_view id) {
  SINKSERVE_RETURN_IF_ERROR(ValidateSessionId(id));
  SINKSERVE_ASSIGN_OR_RETURN(const uint64_t fence, FenceFor(id));
  absl::MutexLock lock(&LockFor(id));
  // Not the header: a corrupt session must be deletable too.
  SINKSERVE_ASSIGN_OR_RETURN(Meta meta, ReadMeta(id, /*with_records=*/true));
  if (!meta.has_session) {
    return absl::NotFoundError(absl::StrCat("no session ", Sv(id), " in ", where_));
  }
  librados::ObjectWriteOperation op;
  Guard(&op, fence, meta.version);
  if (fence != 0) {
    // The epoch outlives the session: a fenced-out owner stays fenced out.
    op.truncate(0);
    op.setxattr(kVersionXattr, U64Bl(0));
    op.omap_clear();
  } else {
    op.remove();
  }
  const int r = cluster_->io.operate(MetaObject(id), &op);
  if (r == -ECANCELED || r == -ENOENT) return Refused(id, "delete", fence, meta.version);
  if (r < 0) return RADOS_ERROR(r, "deleting session ", Sv(id));
  for (const auto& [seq, ref] : meta.records) {
    RemoveRecords(id, ref.token, ref.chunks);
  }
  librados::ObjectWriteOperation unindex;
  unindex.omap_rm_keys({std::string(id)});
  cluster_->io.operate(std::string(kIndexObject), &unindex);
  // Another server may have created the id again since: keep it listed.
  absl::StatusOr<bool> again = Exists(id);
  if (again.ok() && *again) {
    librados::ObjectWriteOperation index;
    index.omap_set({{std::string(id), bufferlist()}});
    cluster_->io.operate(std::string(kIndexObject), &index);
  }
  return absl::OkStatus();
}

absl::StatusOr<VerifyReport> RadosSessionStore::Verify() const {
  VerifyReport report;
  std::string after;
  while (true) {
    librados::ObjectReadOperation op;
    std::map<std::string, bufferlist> ids;
    bool more = false;
    int omap_r = 0;
    op.omap_get_vals2(after, 1000, &ids, &more, &omap_r);
    const int r = cluster_->io.operate(std::string(kIndexObject), &op, nullptr);
    if (r == -ENOENT) break;
    if (r < 0) return RADOS_ERROR(r, "verify");
    for (const auto& [id, unused] : ids) {
      after = id;
      SINKSERVE_ASSIGN_OR_RETURN(Meta meta, ReadMeta(id, /*with_records=*/true));
      if (!meta.has_session) continue;
      ++report.sessions_checked;
      if (!meta.header_status.ok()) {
        report.bad.push_back({id, meta.header_status});
        continue;
      }
      absl::StatusOr<Chain> chain = ReadChain(meta, ChainRead::kVerify);
      if (!chain.ok()) {
        if (absl::IsUnavailable(chain.status())) return chain.status();
        report.bad.push_back({id, chain.status()});
      }
    }
    if (!more) break;
  }
  return report;
}

RadosStoreStats RadosSessionStore::stats() const {
  RadosStoreStats s;
  s.full_checkpoints = counters_.full_checkpoints.load();
  s.delta_checkpoints = counters_.delta_checkpoints.load();
  s.compactions = counters_.compactions.load();
  s.compaction_errors = counters_.compaction_errors.load();
  s.lost_races = counters_.lost_races.load();
  s.fenced_writes = counters_.fenced_writes.load();
  return s;
}

}  // namespace sinkserve::memory
