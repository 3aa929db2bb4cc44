#include "memory/rocksdb_session_store.h"

#include <algorithm>
#include <filesystem>
#include <random>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "memory/rocksdb_records.h"
#include "memory/status_macros.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "rocksdb/utilities/checkpoint.h"
#include "rocksdb/write_batch.h"

namespace sinkserve::memory {

namespace snap = ::sinkserve::memory::snapshot;
using records::BatchReserve;
using records::ChainRead;
using records::ChainResult;
using records::PrefixBegin;
using records::PrefixEnd;
using records::ReadChain;
using records::ReadHeader;
using records::Rs;
using records::SnapshotHolder;
using records::Std;
using records::VerifyAll;

namespace {

absl::string_view Sv(std::string_view s) { return {s.data(), s.size()}; }

constexpr int kMaxListPage = 10000;

uint64_t RandomU64() {
  std::random_device rd;
  return (uint64_t{rd()} << 32) ^ rd() ^
         static_cast<uint64_t>(absl::ToUnixNanos(absl::Now()));
}

}  // namespace

std::string RocksDbSessionStore::RecordKey(std::string_view id, uint64_t seq,
                                           uint32_t part) {
  return records::RecordKey(id, seq, part);
}

absl::Status RocksDbSessionStore::FromRocks(const rocksdb::Status& status,
                                            std::string_view what) const {
  return records::FromRocks(status, dir_, what);
}

records::RecordDb RocksDbSessionStore::records() const {
  return records::RecordDb{db_.get(), meta_, kv_, dir_};
}

RocksDbSessionStore::RocksDbSessionStore(std::string dir,
                                         RocksDbSessionStoreOptions options)
    : dir_(std::move(dir)), options_(options) {}

absl::StatusOr<std::unique_ptr<RocksDbSessionStore>> RocksDbSessionStore::Open(
    const std::string& dir, const RocksDbSessionStoreOptions& options) {
  if (options.compact_after_deltas < 0 || options.kv_chunk_bytes < 4096 ||
      options.kv_chunk_bytes > (uint64_t{1} << 30)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "session store options: compact_after_deltas ",
        options.compact_after_deltas, " must be >= 0 and kv_chunk_bytes ",
        options.kv_chunk_bytes, " in [4 KiB, 1 GiB]"));
  }
  if (dir.empty()) {
    return absl::InvalidArgumentError("session store: empty directory path");
  }
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    if (std::filesystem::exists(dir, ec)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "session store ", dir, " exists but is not a directory"));
    }
    if (!options.create_if_missing || options.read_only) {
      return absl::NotFoundError(
          absl::StrCat("session store directory ", dir, " does not exist",
                       options.read_only ? " (opened read-only)"
                                         : " (create_if_missing is false)"));
    }
    std::filesystem::create_directories(dir, ec);
    if (ec) {
      return absl::ErrnoToStatus(
          ec.value(), absl::StrCat("creating session store directory ", dir,
                                   ": ", ec.message()));
    }
  }
  std::unique_ptr<RocksDbSessionStore> store(
      new RocksDbSessionStore(dir, options));
  SINKSERVE_RETURN_IF_ERROR(store->OpenDb());
  if (options.background_compaction && !options.read_only &&
      options.compact_after_deltas > 0) {
    RocksDbSessionStore* s = store.get();
    store->compactor_ = std::thread([s] { s->CompactionLoop(); });
  }
  return store;
}

absl::Status RocksDbSessionStore::OpenDb() {
  rocksdb::DB* db = nullptr;
  errors_ = std::make_shared<records::WriteErrorTracker>();
  const absl::Status status =
      records::OpenDatabase(dir_, options_, errors_, &db, &handles_);
  db_.reset(db);  // closed by the destructor if a check failed after opening
  if (!status.ok()) return status;
  meta_ = handles_[1];
  kv_ = handles_[2];
  return absl::OkStatus();
}

RocksDbSessionStore::~RocksDbSessionStore() {
  {
    absl::MutexLock lock(&queue_mu_);
    stop_ = true;
    queue_cv_.SignalAll();
  }
  if (compactor_.joinable()) compactor_.join();
  if (db_ != nullptr) {
    for (rocksdb::ColumnFamilyHandle* h : handles_) {
      db_->DestroyColumnFamilyHandle(h);
    }
    db_->Close().PermitUncheckedError();
  }
}

absl::Status RocksDbSessionStore::CheckWritable() const {
  if (options_.read_only) {
    return absl::FailedPreconditionError(
        absl::StrCat("session store ", dir_, " is open read-only"));
  }
  return absl::OkStatus();
}

absl::Mutex& RocksDbSessionStore::LockFor(std::string_view id) const {
  return stripes_[std::hash<std::string_view>()(id) % stripes_.size()];
}

absl::StatusOr<CheckpointResult> RocksDbSessionStore::Put(
    const SessionState& state) {
  const absl::Time start = absl::Now();
  SINKSERVE_RETURN_IF_ERROR(CheckWritable());
  SINKSERVE_RETURN_IF_ERROR(state.Validate());
  const std::string& id = state.id;
  absl::MutexLock lock(&LockFor(id));
  absl::StatusOr<std::optional<snap::SessionHeader>> old =
      ReadHeader(records(), id, nullptr);
  // A corrupt header must not block replacing the session: start over.
  if (!old.ok() && old.status().code() != absl::StatusCode::kDataLoss) {
    return old.status();
  }
  const bool had = old.ok() && old->has_value();
  // A new session's versions start at the current time in microseconds, so a
  // session deleted and created again never repeats a version an old client
  // may still hold.
  const uint64_t seq = had ? (*old)->info.version + 1
                           : static_cast<uint64_t>(std::max<int64_t>(
                                 1, absl::ToUnixMicros(absl::Now())));
  const uint64_t incarnation = had ? (*old)->incarnation : RandomU64();

  // Reserved up front: grown by doubling, a batch of tens of MB of rows
  // was copied (and page-faulted) several times over.
  rocksdb::WriteBatch batch(BatchReserve(state.kv.size()));
  SINKSERVE_RETURN_IF_ERROR(FromRocks(
      had ? batch.DeleteRange(kv_, Rs(RecordKey(id, 0, 0)),
                              Rs(RecordKey(id, seq, 0)))
          : batch.DeleteRange(kv_, Rs(PrefixBegin(id)), Rs(PrefixEnd(id))),
      "batching"));
  const std::string record = snap::EncodeFullState(
      state, seq, snap::KvChunkCount(state.kv.size(), options_.kv_chunk_bytes));
  SINKSERVE_RETURN_IF_ERROR(AddRecord(records(), &batch, id, seq, record,
                                      state.kv, options_.kv_chunk_bytes));
  SINKSERVE_RETURN_IF_ERROR(FromRocks(
      batch.Put(
          meta_, Rs(MetaKey(id)),
          snap::EncodeSessionHeader(snap::HeaderOf(state, incarnation, seq, seq))),
      "batching"));
  CheckpointResult result;
  SINKSERVE_RETURN_IF_ERROR(
      WriteFor(id, state.kv.size(), &batch, options_.sync, &result.bytes_written));
  result.version = seq;
  result.full = true;
  result.latency = absl::Now() - start;
  counters_.full_checkpoints.fetch_add(1, std::memory_order_relaxed);
  counters_.full_bytes_written.fetch_add(result.bytes_written,
                                         std::memory_order_relaxed);
  return result;
}

absl::StatusOr<CheckpointResult> RocksDbSessionStore::Append(
    std::string_view id, uint64_t base_version, const SessionDelta& delta) {
  const absl::Time start = absl::Now();
  SINKSERVE_RETURN_IF_ERROR(CheckWritable());
  SINKSERVE_RETURN_IF_ERROR(ValidateSessionId(id));
  CheckpointResult result;
  bool fold = false;
  {
    absl::MutexLock lock(&LockFor(id));
    SINKSERVE_ASSIGN_OR_RETURN(std::optional<snap::SessionHeader> header,
                               ReadHeader(records(), id, nullptr));
    if (!header) {
      return absl::NotFoundError(absl::StrCat(
          "append to session ", Sv(id), ": no such session (Put it first)"));
    }
    if (header->info.version != base_version) {
      return absl::AbortedError(absl::StrCat(
          "append to session ", Sv(id), ": the delta was made against version ",
          base_version, " but the session is at version ", header->info.version,
          "; load it again or write a full snapshot"));
    }
    // Validate the delta against the stored metadata, so that a bad delta is
    // refused now instead of making the session unloadable later.
    SINKSERVE_ASSIGN_OR_RETURN(
        ChainResult chain,
        ReadChain(records(), *header, nullptr, ChainRead::kMetadata));
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

    rocksdb::WriteBatch batch(BatchReserve(delta.kv.size()));
    const std::string record = snap::EncodeDelta(
        id, seq, delta,
        snap::KvChunkCount(delta.kv.size(), options_.kv_chunk_bytes));
    SINKSERVE_RETURN_IF_ERROR(AddRecord(records(), &batch, id, seq, record,
                                        delta.kv, options_.kv_chunk_bytes));
    SINKSERVE_RETURN_IF_ERROR(FromRocks(
        batch.Put(meta_, Rs(MetaKey(id)),
                  snap::EncodeSessionHeader(snap::HeaderOf(next, header->incarnation,
                                                      header->base_seq, seq))),
        "batching"));
    SINKSERVE_RETURN_IF_ERROR(
        WriteFor(id, delta.kv.size(), &batch, options_.sync, &result.bytes_written));
    result.version = seq;
    fold = options_.compact_after_deltas > 0 &&
           seq - header->base_seq >=
               static_cast<uint64_t>(options_.compact_after_deltas);
  }
  counters_.delta_checkpoints.fetch_add(1, std::memory_order_relaxed);
  counters_.delta_bytes_written.fetch_add(result.bytes_written,
                                          std::memory_order_relaxed);
  if (fold) {
    if (options_.background_compaction) {
      EnqueueCompaction(id);
    } else if (absl::Status s = Compact(id); !s.ok()) {
      // The delta is stored; the chain just stays long until a fold works.
      counters_.compaction_errors.fetch_add(1, std::memory_order_relaxed);
    }
  }
  result.latency = absl::Now() - start;
  return result;
}

absl::StatusOr<LoadedSession> RocksDbSessionStore::Load(
    std::string_view id, std::string_view model_fingerprint) const {
  return LoadChain(id, model_fingerprint, /*with_kv=*/true);
}

absl::StatusOr<LoadedSession> RocksDbSessionStore::LoadMetadata(
    std::string_view id, std::string_view model_fingerprint) const {
  return LoadChain(id, model_fingerprint, /*with_kv=*/false);
}

absl::StatusOr<LoadedSession> RocksDbSessionStore::LoadChain(
    std::string_view id, std::string_view model_fingerprint, bool with_kv) const {
  SINKSERVE_RETURN_IF_ERROR(ValidateSessionId(id));
  if (model_fingerprint.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "load of session ", Sv(id),
        ": empty model fingerprint (pass SessionStore::kAnyModel to skip the "
        "check)"));
  }
  SnapshotHolder snapshot(db_.get());
  SINKSERVE_ASSIGN_OR_RETURN(std::optional<snap::SessionHeader> header,
                             ReadHeader(records(), id, snapshot.get()));
  if (!header) {
    return absl::NotFoundError(
        absl::StrCat("no session ", Sv(id), " in ", dir_));
  }
  if (model_fingerprint != kAnyModel &&
      header->info.model_fingerprint != model_fingerprint) {
    return absl::FailedPreconditionError(absl::StrCat(
        "session ", Sv(id), " was checkpointed with model '",
        header->info.model_fingerprint, "' but this server runs model '",
        Sv(model_fingerprint), "'; its K/V cache is meaningless here"));
  }
  SINKSERVE_ASSIGN_OR_RETURN(
      ChainResult chain,
      ReadChain(records(), *header, snapshot.get(),
                with_kv ? ChainRead::kFull : ChainRead::kMetadata));
  counters_.loads.fetch_add(1, std::memory_order_relaxed);
  counters_.load_bytes_read.fetch_add(chain.bytes_read,
                                      std::memory_order_relaxed);
  LoadedSession loaded;
  loaded.state = std::move(chain.state);
  loaded.version = header->info.version;
  loaded.records = chain.records;
  loaded.bytes_read = chain.bytes_read;
  return loaded;
}

absl::StatusOr<bool> RocksDbSessionStore::Exists(std::string_view id) const {
  SINKSERVE_RETURN_IF_ERROR(ValidateSessionId(id));
  rocksdb::PinnableSlice value;
  const rocksdb::Status s =
      db_->Get(rocksdb::ReadOptions(), meta_, Rs(MetaKey(id)), &value);
  if (s.IsNotFound()) return false;
  SINKSERVE_RETURN_IF_ERROR(FromRocks(s, absl::StrCat("lookup of ", Sv(id))));
  return true;
}

absl::StatusOr<SessionInfo> RocksDbSessionStore::Info(
    std::string_view id) const {
  SINKSERVE_RETURN_IF_ERROR(ValidateSessionId(id));
  SINKSERVE_ASSIGN_OR_RETURN(std::optional<snap::SessionHeader> header,
                             ReadHeader(records(), id, nullptr));
  if (!header) {
    return absl::NotFoundError(
        absl::StrCat("no session ", Sv(id), " in ", dir_));
  }
  return std::move(header->info);
}

absl::StatusOr<ListPage> RocksDbSessionStore::List(
    const ListOptions& options) const {
  const int max = std::clamp(options.max_sessions, 1, kMaxListPage);
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(rocksdb::ReadOptions(), meta_));
  it->Seek(Rs(options.start_after));
  if (it->Valid() && Std(it->key()) == options.start_after) it->Next();
  ListPage page;
  std::string last;
  for (int n = 0; it->Valid() && n < max; ++n, it->Next()) {
    last = std::string(Std(it->key()));
    absl::StatusOr<snap::SessionHeader> h =
        snap::DecodeSessionHeader(Std(it->value()));
    if (h.ok() && h->info.id != last) {
      h = absl::DataLossError(
          absl::StrCat("header names session ", h->info.id));
    }
    if (h.ok()) {
      page.sessions.push_back(std::move(h->info));
    } else {
      page.bad.push_back(
          {last, snap::Annotate(h.status(),
                                absl::StrCat("session ", last, " header"))});
    }
  }
  SINKSERVE_RETURN_IF_ERROR(FromRocks(it->status(), "list"));
  if (it->Valid()) page.next_start_after = last;
  return page;
}

absl::Status RocksDbSessionStore::Delete(std::string_view id) {
  SINKSERVE_RETURN_IF_ERROR(CheckWritable());
  SINKSERVE_RETURN_IF_ERROR(ValidateSessionId(id));
  absl::MutexLock lock(&LockFor(id));
  SINKSERVE_ASSIGN_OR_RETURN(bool exists, Exists(id));
  if (!exists) {
    return absl::NotFoundError(
        absl::StrCat("no session ", Sv(id), " in ", dir_));
  }
  // No need to read the header: a corrupt session must be deletable too.
  rocksdb::WriteBatch batch;
  SINKSERVE_RETURN_IF_ERROR(
      FromRocks(batch.Delete(meta_, Rs(MetaKey(id))), "batching"));
  SINKSERVE_RETURN_IF_ERROR(
      FromRocks(batch.DeleteRange(kv_, Rs(PrefixBegin(id)), Rs(PrefixEnd(id))),
                "batching"));
  uint64_t bytes = 0;
  return Write(&batch, options_.sync, &bytes);
}

absl::StatusOr<VerifyReport> RocksDbSessionStore::Verify() const {
  SnapshotHolder snapshot(db_.get());
  return VerifyAll(records(), snapshot.get());
}

StoreStats RocksDbSessionStore::stats() const {
  StoreStats s;
  s.full_checkpoints = counters_.full_checkpoints.load();
  s.delta_checkpoints = counters_.delta_checkpoints.load();
  s.full_bytes_written = counters_.full_bytes_written.load();
  s.delta_bytes_written = counters_.delta_bytes_written.load();
  s.compactions = counters_.compactions.load();
  s.compaction_bytes_written = counters_.compaction_bytes_written.load();
  s.compaction_errors = counters_.compaction_errors.load();
  s.loads = counters_.loads.load();
  s.load_bytes_read = counters_.load_bytes_read.load();
  return s;
}

}  // namespace sinkserve::memory
