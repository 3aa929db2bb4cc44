#include "memory/rocksdb_records.h"

#include <cstdarg>
#include <cstdio>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "memory/rocksdb_session_store.h"
#include "memory/status_macros.h"
#include "rocksdb/env.h"
#include "rocksdb/options.h"

namespace sinkserve::memory::records {
namespace {

namespace snap = ::sinkserve::memory::snapshot;

absl::string_view Sv(std::string_view s) { return {s.data(), s.size()}; }

void PutBigEndian(std::string* out, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) {
    out->push_back(static_cast<char>(v >> (8 * i)));
  }
}

uint64_t LoadBigEndian(std::string_view s) {
  uint64_t v = 0;
  for (char c : s) v = (v << 8) | static_cast<uint8_t>(c);
  return v;
}

absl::StatusCode CodeOf(const rocksdb::Status& s) {
  if (s.IsNotFound() || s.IsPathNotFound()) return absl::StatusCode::kNotFound;
  if (s.IsCorruption()) return absl::StatusCode::kDataLoss;
  if (s.IsNoSpace() || s.IsMemoryLimit()) {
    return absl::StatusCode::kResourceExhausted;
  }
  if (s.IsIOError()) {
    // RocksDB folds errno into IOError's text; the ones a caller must not
    // retry blindly get their own codes.
    const std::string msg = s.ToString();
    if (absl::StrContains(msg, "No space left") ||
        absl::StrContains(msg, "File too large") ||
        absl::StrContains(msg, "Disk quota")) {
      return absl::StatusCode::kResourceExhausted;
    }
    if (absl::StrContains(msg, "Permission denied") ||
        absl::StrContains(msg, "Read-only file system") ||
        absl::StrContains(msg, "Operation not permitted")) {
      return absl::StatusCode::kPermissionDenied;
    }
    return absl::StatusCode::kUnavailable;
  }
  // RocksDB's InvalidArgument is about the database on disk (e.g. options it
  // was created with), not about our caller's arguments.
  if (s.IsInvalidArgument()) return absl::StatusCode::kFailedPrecondition;
  if (s.IsNotSupported()) return absl::StatusCode::kUnimplemented;
  if (s.IsAborted()) return absl::StatusCode::kAborted;
  if (s.IsBusy() || s.IsTimedOut() || s.IsTryAgain() ||
      s.IsShutdownInProgress() || s.IsIncomplete()) {
    return absl::StatusCode::kUnavailable;
  }
  return absl::StatusCode::kInternal;
}

// RocksDB's warnings and errors go to stderr, not to a LOG file in the store:
// the server's log is where operators look, and RocksDB 7.8 asserts when its
// own LOG file hits a full disk (the moment its messages matter most).
class StderrLogger : public rocksdb::Logger {
 public:
  explicit StderrLogger(std::string dir)
      : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL),
        dir_(std::move(dir)) {}
  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    char line[1024];
    std::vsnprintf(line, sizeof(line), format, ap);
    std::fprintf(stderr, "rocksdb %s: %s\n", dir_.c_str(), line);
  }

 private:
  std::string dir_;
};

std::string SessionContext(std::string_view id, uint64_t seq) {
  return absl::StrCat("session ", Sv(id), " record ", seq);
}

}  // namespace

absl::Status FromRocks(const rocksdb::Status& status, std::string_view dir,
                       std::string_view what) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(CodeOf(status),
                      absl::StrCat("session store ", Sv(dir), ": ", Sv(what),
                                   ": ", status.ToString()));
}

std::string RecordKey(std::string_view id, uint64_t seq, uint32_t part) {
  std::string key = PrefixBegin(id);
  PutBigEndian(&key, seq, 8);
  PutBigEndian(&key, part, 4);
  return key;
}

std::string PrefixBegin(std::string_view id) {
  std::string key(id);
  key.push_back('\0');
  return key;
}

std::string PrefixEnd(std::string_view id) {
  std::string key(id);
  key.push_back('\x01');
  return key;
}

std::string DescribeKey(std::string_view key) {
  const size_t nul = key.find('\0');
  if (nul == std::string_view::npos || key.size() != nul + 13) {
    return absl::StrCat("'", absl::CHexEscape(Sv(key)), "'");
  }
  return absl::StrCat(Sv(key.substr(0, nul)), "/",
                      LoadBigEndian(key.substr(nul + 1, 8)), "/",
                      LoadBigEndian(key.substr(nul + 9, 4)));
}

absl::StatusOr<std::optional<snap::SessionHeader>> ReadHeader(
    const RecordDb& db, std::string_view id,
    const rocksdb::Snapshot* snapshot) {
  rocksdb::ReadOptions ro;
  ro.snapshot = snapshot;
  std::string value;
  const rocksdb::Status s = db.db->Get(ro, db.meta, Rs(id), &value);
  if (s.IsNotFound()) return std::optional<snap::SessionHeader>();
  SINKSERVE_RETURN_IF_ERROR(
      FromRocks(s, db.dir, absl::StrCat("reading header of session ", Sv(id))));
  absl::StatusOr<snap::SessionHeader> h = snap::DecodeSessionHeader(value);
  if (!h.ok()) {
    return snap::Annotate(h.status(),
                          absl::StrCat("session ", Sv(id), " header"));
  }
  if (h->info.id != id) {
    return absl::DataLossError(
        absl::StrCat("session ", Sv(id), " header names session ", h->info.id));
  }
  return std::optional<snap::SessionHeader>(*std::move(h));
}

absl::StatusOr<ChainResult> ReadChain(const RecordDb& db,
                                      const snap::SessionHeader& header,
                                      const rocksdb::Snapshot* snapshot,
                                      ChainRead mode) {
  const std::string& id = header.info.id;
  const uint64_t base = header.base_seq;
  const uint64_t last = header.info.version;
  rocksdb::ReadOptions ro;
  ro.snapshot = snapshot;
  const std::string upper = RecordKey(id, last + 1, 0);
  const rocksdb::Slice upper_slice = Rs(upper);
  ro.iterate_upper_bound = &upper_slice;
  ro.adaptive_readahead = true;
  std::unique_ptr<rocksdb::Iterator> it;
  if (mode != ChainRead::kMetadata) {
    it.reset(db.db->NewIterator(ro, db.kv));
    it->Seek(Rs(RecordKey(id, base, 0)));
  }

  ChainResult result;
  std::optional<StateReplayer> replayer;
  int64_t cell_bytes = 0;
  // The value at `key`, from the iterator (which must be on exactly that
  // key: anything else means a record is missing or stray) or a point read.
  std::string point_value;
  auto value_at =
      [&](const std::string& key,
          const std::string& what) -> absl::StatusOr<std::string_view> {
    if (mode == ChainRead::kMetadata) {
      const rocksdb::Status s = db.db->Get(ro, db.kv, Rs(key), &point_value);
      if (s.IsNotFound()) {
        return absl::DataLossError(absl::StrCat(what, " is missing"));
      }
      SINKSERVE_RETURN_IF_ERROR(FromRocks(s, db.dir, what));
      result.bytes_read += point_value.size();
      return std::string_view(point_value);
    }
    if (!it->Valid()) {
      SINKSERVE_RETURN_IF_ERROR(FromRocks(it->status(), db.dir, what));
      return absl::DataLossError(absl::StrCat(what, " is missing"));
    }
    if (Std(it->key()) != key) {
      return absl::DataLossError(absl::StrCat(what, " is missing (found key ",
                                              DescribeKey(Std(it->key())),
                                              " in its place)"));
    }
    result.bytes_read += it->value().size();
    return Std(it->value());
  };

  for (uint64_t seq = base; seq <= last; ++seq) {
    const std::string ctx = SessionContext(id, seq);
    SINKSERVE_ASSIGN_OR_RETURN(std::string_view body,
                               value_at(RecordKey(id, seq, 0), ctx));
    snap::RecordInfo info;
    SessionState full;
    SessionDelta delta;
    if (seq == base) {
      absl::StatusOr<snap::FullStateRecord> rec = snap::DecodeFullState(body);
      if (!rec.ok()) return snap::Annotate(rec.status(), ctx);
      full = std::move(rec->state);
      info = std::move(rec->info);
      // Validated before anything is computed from its shape.
      if (absl::Status valid = full.ValidateMetadata(); !valid.ok()) {
        return absl::DataLossError(
            absl::StrCat(ctx, ": not a valid state: ", valid.message()));
      }
      cell_bytes = full.kv_shape.cell_bytes();
    } else {
      absl::StatusOr<snap::DeltaRecord> rec = snap::DecodeDelta(body);
      if (!rec.ok()) return snap::Annotate(rec.status(), ctx);
      delta = std::move(rec->delta);
      info = std::move(rec->info);
    }
    if (info.id != id || info.seq != seq) {
      return absl::DataLossError(absl::StrCat(
          ctx, " says it is record ", info.seq, " of session ", info.id));
    }
    const int64_t kv_cells = seq == base
                                 ? static_cast<int64_t>(full.cache.cells.size())
                                 : delta.kv_cells();
    if (info.kv_bytes % cell_bytes != 0 ||
        info.kv_bytes / cell_bytes != static_cast<uint64_t>(kv_cells)) {
      return absl::DataLossError(absl::StrCat(ctx, ": ", info.kv_bytes,
                                              " kv bytes for ", kv_cells,
                                              " cells of ", cell_bytes));
    }
    ++result.records;

    std::string kv;
    if (mode != ChainRead::kMetadata) {
      if (mode == ChainRead::kFull) kv.reserve(info.kv_bytes);
      uint64_t got = 0;
      for (uint32_t part = 1; part <= info.kv_chunks; ++part) {
        it->Next();
        const std::string chunk_ctx =
            absl::StrCat(ctx, " kv chunk ", part, " of ", info.kv_chunks);
        SINKSERVE_ASSIGN_OR_RETURN(
            std::string_view value,
            value_at(RecordKey(id, seq, part), chunk_ctx));
        absl::StatusOr<std::string_view> data =
            snap::DecodeKvChunk(value, seq, part);
        if (!data.ok()) return snap::Annotate(data.status(), chunk_ctx);
        got += data->size();
        if (got > info.kv_bytes) break;
        if (mode == ChainRead::kFull) kv.append(data->data(), data->size());
      }
      if (got != info.kv_bytes) {
        return absl::DataLossError(absl::StrCat(ctx, ": kv chunks hold ", got,
                                                " bytes, the record says ",
                                                info.kv_bytes));
      }
      it->Next();
    }

    if (seq == base) {
      full.kv = std::move(kv);  // its size was checked against the cells
      replayer.emplace(std::move(full), mode == ChainRead::kFull);
    } else {
      absl::Status applied = replayer->Apply(delta, std::move(kv));
      if (!applied.ok()) {
        return absl::DataLossError(
            absl::StrCat(ctx, ": delta does not apply: ", applied.message()));
      }
    }
  }
  if (it != nullptr) {
    if (it->Valid()) {
      return absl::DataLossError(absl::StrCat(
          "session ", Sv(id), ": stray key ", DescribeKey(Std(it->key())),
          " inside its record chain"));
    }
    SINKSERVE_RETURN_IF_ERROR(FromRocks(
        it->status(), db.dir, absl::StrCat("reading session ", Sv(id))));
  }
  result.state = std::move(*replayer).Finish();

  // The header is written with every record; they must agree.
  const SessionState& s = result.state;
  const SessionInfo& i = header.info;
  if (s.model_fingerprint != i.model_fingerprint ||
      s.policy.ToString() != i.policy || s.capacity != i.capacity ||
      s.kv_shape != i.kv_shape ||
      static_cast<int64_t>(s.cache.cells.size()) != i.cells ||
      s.cache.tokens_seen != i.tokens_seen || s.rounds != i.rounds ||
      s.turns != i.turns || s.history_length != i.history_length ||
      s.updated_at != i.updated_at) {
    return absl::DataLossError(absl::StrCat(
        "session ", Sv(id), ": header (", i.cells, " cells, ", i.tokens_seen,
        " tokens, ", i.rounds, " rounds) and records (", s.cache.cells.size(),
        " cells, ", s.cache.tokens_seen, " tokens, ", s.rounds,
        " rounds) disagree"));
  }
  return result;
}

absl::Status AddRecord(const RecordDb& db, rocksdb::WriteBatch* batch,
                       std::string_view id, uint64_t seq,
                       const std::string& record, std::string_view kv,
                       uint64_t chunk_bytes) {
  SINKSERVE_RETURN_IF_ERROR(
      FromRocks(batch->Put(db.kv, Rs(RecordKey(id, seq, 0)), Rs(record)),
                db.dir, "batching"));
  const uint64_t chunk = chunk_bytes;
  const uint32_t chunks = snap::KvChunkCount(kv.size(), chunk);
  for (uint32_t i = 0; i < chunks; ++i) {
    const std::string_view data = kv.substr(i * chunk, chunk);
    const std::string key = RecordKey(id, seq, i + 1);
    const std::string prefix = snap::KvChunkPrefix(seq, i + 1, data);
    // The rows go into the batch straight from the caller's buffer.
    const rocksdb::Slice key_slice = Rs(key);
    const rocksdb::Slice value_parts[2] = {Rs(prefix), Rs(data)};
    SINKSERVE_RETURN_IF_ERROR(
        FromRocks(batch->Put(db.kv, rocksdb::SliceParts(&key_slice, 1),
                             rocksdb::SliceParts(value_parts, 2)),
                  db.dir, "batching"));
  }
  return absl::OkStatus();
}

absl::StatusOr<VerifyReport> VerifyAll(const RecordDb& db,
                                       const rocksdb::Snapshot* snapshot) {
  rocksdb::ReadOptions ro;
  ro.snapshot = snapshot;
  VerifyReport report;
  // Key ranges of "kv" that belong to a session: its chain, or all its keys
  // when its header is unreadable (it is reported already).
  std::vector<std::pair<std::string, std::string>> owned;
  std::unique_ptr<rocksdb::Iterator> meta(db.db->NewIterator(ro, db.meta));
  for (meta->SeekToFirst(); meta->Valid(); meta->Next()) {
    const std::string id(Std(meta->key()));
    ++report.sessions_checked;
    if (absl::Status s = ValidateSessionId(id); !s.ok()) {
      report.bad.push_back({absl::CHexEscape(id), s});
      continue;
    }
    absl::StatusOr<std::optional<snap::SessionHeader>> header =
        ReadHeader(db, id, snapshot);
    if (!header.ok()) {
      report.bad.push_back({id, header.status()});
      owned.emplace_back(PrefixBegin(id), PrefixEnd(id));
      continue;
    }
    owned.emplace_back(RecordKey(id, (*header)->base_seq, 0),
                       RecordKey(id, (*header)->info.version + 1, 0));
    absl::StatusOr<ChainResult> chain =
        ReadChain(db, **header, snapshot, ChainRead::kVerify);
    if (!chain.ok()) report.bad.push_back({id, chain.status()});
  }
  SINKSERVE_RETURN_IF_ERROR(FromRocks(meta->status(), db.dir, "verify"));

  // Records outside every chain: left behind by a bug, never by a crash.
  std::unique_ptr<rocksdb::Iterator> kv(db.db->NewIterator(ro, db.kv));
  size_t next = 0;
  kv->SeekToFirst();
  while (kv->Valid()) {
    const std::string key(Std(kv->key()));
    while (next < owned.size() && owned[next].second <= key) ++next;
    if (next < owned.size() && owned[next].first <= key) {
      kv->Seek(Rs(owned[next].second));
      continue;
    }
    const std::string id = key.substr(0, key.find('\0'));
    report.bad.push_back(
        {id, absl::DataLossError(
                 absl::StrCat("record ", DescribeKey(key),
                              " lies outside any session's record chain"))});
    kv->Seek(Rs(PrefixEnd(id)));
  }
  SINKSERVE_RETURN_IF_ERROR(FromRocks(kv->status(), db.dir, "verify"));
  return report;
}

void WriteErrorTracker::OnBackgroundError(
    rocksdb::BackgroundErrorReason /*reason*/, rocksdb::Status* bg_error) {
  // Soft errors (a compaction out of space) leave writes working; resuming
  // for them would flush the memtables at every checkpoint while the disk is
  // short.
  if (bg_error->severity() >= rocksdb::Status::Severity::kHardError) {
    stopping_errors_.fetch_add(1, std::memory_order_acq_rel);
  }
}

void WriteErrorTracker::OnErrorRecoveryBegin(
    rocksdb::BackgroundErrorReason /*reason*/, rocksdb::Status bg_error,
    bool* auto_recovery) {
  bg_error.PermitUncheckedError();
  // Also for soft errors: an automatic recovery in progress would make the
  // store's DB::Resume Busy once a hard error follows.
  *auto_recovery = false;
}

absl::Status OpenDatabase(const std::string& dir,
                          const RocksDbSessionStoreOptions& options,
                          std::shared_ptr<WriteErrorTracker> tracker,
                          rocksdb::DB** db_out,
                          std::vector<rocksdb::ColumnFamilyHandle*>* handles) {
  rocksdb::DBOptions db_options;
  if (tracker != nullptr) db_options.listeners.push_back(std::move(tracker));
  const bool create = options.create_if_missing && !options.read_only;
  db_options.create_if_missing = create;
  db_options.create_missing_column_families = create;
  db_options.info_log = std::make_shared<StderrLogger>(dir);
  db_options.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  // Flushes of large memtables run beside compactions and WAL syncs.
  db_options.max_background_jobs = 4;
  // Large checkpoints skip the WAL and are made durable by a flush
  // (wal_max_kv_bytes): a header (meta) must then never reach the disk
  // without the record (kv) it points at, so both flush together.
  db_options.atomic_flush = true;
  // When writers must slow down, do it at disk speed, not at RocksDB's
  // default 16 MB/s (which stalled a 64-session GPU server for seconds).
  db_options.delayed_write_rate = uint64_t{256} << 20;
  // Write blob and SST files out as they grow, so the fsync at the end of a
  // flush (and the WAL syncs beside it) do not find gigabytes dirty.
  db_options.bytes_per_sync = uint64_t{8} << 20;

  // An existing database must be ours (or our own half-created one): adding
  // column families to somebody else's would modify it.
  std::vector<std::string> existing;
  const rocksdb::Status listed =
      rocksdb::DB::ListColumnFamilies(db_options, dir, &existing);
  if (listed.ok()) {
    for (const std::string& cf : existing) {
      if (cf != rocksdb::kDefaultColumnFamilyName &&
          cf != RocksDbSessionStore::kMetaColumnFamily &&
          cf != RocksDbSessionStore::kKvColumnFamily) {
        return absl::FailedPreconditionError(
            absl::StrCat("session store ", dir,
                         ": the directory holds a RocksDB database "
                         "with column family '",
                         cf, "'; not a sinkserve session store"));
      }
    }
  } else if (!create) {
    // A missing database reads as an IOError (no CURRENT file).
    return absl::NotFoundError(absl::StrCat(
        "session store ", dir, " holds no database (",
        options.read_only ? "opened read-only" : "create_if_missing is false",
        "): ", listed.ToString()));
  }

  rocksdb::ColumnFamilyOptions meta_options;
  rocksdb::ColumnFamilyOptions kv_options;
  kv_options.enable_blob_files = true;
  kv_options.min_blob_size = options.min_blob_size;
  // Folding a chain and deleting sessions turn blobs into garbage; without
  // blob GC their files would never shrink.
  kv_options.enable_blob_garbage_collection = true;
  // Checkpoints are large (a 64-token turn of a 7B-shaped f16 model is
  // ~35 MB): with RocksDB's 64 MiB memtables and the default two of them,
  // every second turn flushed and writers stalled behind the flush, then
  // crawled at delayed_write_rate (16 MB/s). 256 MiB memtables, six of them,
  // absorb bursts of many sessions' turns while earlier ones flush; the
  // flush itself only moves the values into blob files.
  kv_options.write_buffer_size = size_t{256} << 20;
  kv_options.max_write_buffer_number = 6;
  // L0 files hold keys and blob references only (tiny): let more pile up
  // before slowing writers.
  kv_options.level0_slowdown_writes_trigger = 40;
  kv_options.level0_stop_writes_trigger = 64;
  // K/V rows are float noise to a compressor; the default (none) stays.
  kv_options.blob_compression_type = rocksdb::kNoCompression;
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors = {
      {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions()},
      {std::string(RocksDbSessionStore::kMetaColumnFamily), meta_options},
      {std::string(RocksDbSessionStore::kKvColumnFamily), kv_options},
  };
  rocksdb::DB* db = nullptr;
  const rocksdb::Status s =
      options.read_only
          ? rocksdb::DB::OpenForReadOnly(db_options, dir, descriptors, handles,
                                         &db)
          : rocksdb::DB::Open(db_options, dir, descriptors, handles, &db);
  if (!s.ok()) return FromRocks(s, dir, "open");
  // The caller owns the database from here on, also if a check below fails.
  *db_out = db;

  std::string marker;
  const rocksdb::Status got =
      db->Get(rocksdb::ReadOptions(), (*handles)[0],
              Rs(RocksDbSessionStore::kStoreMarkerKey), &marker);
  if (got.ok()) {
    absl::StatusOr<uint32_t> version = snap::DecodeStoreMarker(marker);
    if (!version.ok()) {
      return snap::Annotate(version.status(),
                            absl::StrCat("session store ", dir, " marker"));
    }
    if (*version > RocksDbSessionStore::kStoreVersion) {
      return absl::FailedPreconditionError(absl::StrCat(
          "session store ", dir, " has layout version ", *version,
          "; this build handles up to ", RocksDbSessionStore::kStoreVersion));
    }
    return absl::OkStatus();
  }
  if (!got.IsNotFound()) return FromRocks(got, dir, "reading the store marker");
  // No marker: a new store, unless something else already wrote data here.
  for (rocksdb::ColumnFamilyHandle* cf : *handles) {
    std::unique_ptr<rocksdb::Iterator> it(
        db->NewIterator(rocksdb::ReadOptions(), cf));
    it->SeekToFirst();
    if (it->Valid()) {
      return absl::FailedPreconditionError(
          absl::StrCat("session store ", dir,
                       ": database has data but no sinkserve store marker"));
    }
    SINKSERVE_RETURN_IF_ERROR(FromRocks(it->status(), dir, "open"));
  }
  if (options.read_only) return absl::OkStatus();
  rocksdb::WriteOptions wo;
  wo.sync = true;
  return FromRocks(
      db->Put(wo, (*handles)[0], Rs(RocksDbSessionStore::kStoreMarkerKey),
              snap::EncodeStoreMarker(RocksDbSessionStore::kStoreVersion)),
      dir, "writing the store marker");
}

}  // namespace sinkserve::memory::records
