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
#include "memory/snapshot_format.h"
#include "memory/status_macros.h"

namespace sinkserve::memory {

namespace snap = ::sinkserve::memory::snapshot;
using librados::bufferlist;

namespace {

constexpr int kMaxListPage = 10000;
// Record maps never get near this: a chain is folded every few deltas.
constexpr uint64_t kMaxChainRecords = 1 << 20;
// Put retries when another writer keeps moving the session under it.
constexpr int kPutAttempts = 5;
// Loads retry when a fold or Put removed records they were about to read.
constexpr int kLoadAttempts = 4;

constexpr char kVersionXattr[] = "version";
constexpr char kEpochXattr[] = "epoch";

absl::string_view Sv(std::string_view s) { return {s.data(), s.size()}; }

uint64_t RandomU64() {
  thread_local std::mt19937_64 rng(std::random_device{}() ^
                                   static_cast<uint64_t>(
                                       absl::ToUnixNanos(absl::Now())));
  return rng();
}

// librados error (negative errno) -> what a caller should do about it.
absl::StatusCode CodeOf(int r) {
  switch (-r) {
    case ENOENT:
      return absl::StatusCode::kNotFound;
    case ECANCELED:
      return absl::StatusCode::kAborted;
    case EEXIST:
      return absl::StatusCode::kAlreadyExists;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
      return absl::StatusCode::kResourceExhausted;
    case EACCES:
    case EPERM:
      return absl::StatusCode::kPermissionDenied;
    case EINVAL:
    case ERANGE:
    case EOPNOTSUPP:
      return absl::StatusCode::kInternal;
    default:
      // ETIMEDOUT (op timeout), ENOTCONN, ESHUTDOWN, EIO, EAGAIN, ...: the
      // cluster did not do it now; it may later.
      return absl::StatusCode::kUnavailable;
  }
}

std::string SeqKey(uint64_t seq) { return absl::StrFormat("%016x", seq); }

bufferlist Bl(std::string_view s) {
  bufferlist bl;
  bl.append(s.data(), s.size());
  return bl;
}

bufferlist U64Bl(uint64_t v) { return Bl(absl::StrCat(v)); }

// The rows of a K/V chunk go to librados without a copy: the buffer is only
// read, and every write that uses it is waited for before it goes away.
bufferlist StaticBl(std::string_view s) {
  bufferlist bl;
  if (!s.empty()) {
    bl.append(ceph::buffer::ptr(ceph::buffer::create_static(
        static_cast<unsigned>(s.size()), const_cast<char*>(s.data()))));
  }
  return bl;
}

std::string_view View(bufferlist& bl) {
  return bl.length() == 0 ? std::string_view()
                          : std::string_view(bl.c_str(), bl.length());
}

// A record map value: "<token>:<kv chunks>".
std::string RecordRef(std::string_view token, uint32_t chunks) {
  return absl::StrCat(Sv(token), ":", chunks);
}

struct Completion {
  librados::AioCompletion* c = librados::Rados::aio_create_completion();
  Completion() = default;
  Completion(const Completion&) = delete;
  Completion& operator=(const Completion&) = delete;
  ~Completion() { c->release(); }
  int Wait() {
    c->wait_for_complete();
    return c->get_return_value();
  }
};

}  // namespace

struct RadosSessionStore::Meta {
  bool exists = false;  // the object (possibly only a claimed epoch)
  bool has_session = false;
  absl::Status header_status;  // DATA_LOSS if the header is unreadable
  snap::SessionHeader header;
  uint64_t version = 0;  // "version" xattr
  uint64_t epoch = 0;    // "epoch" xattr
  struct Ref {
    std::string token;
    uint32_t chunks = 0;
  };
  std::map<uint64_t, Ref> records;  // with_records only
  absl::Status records_status;
};

struct RadosSessionStore::Chain {
  SessionState state;
  int64_t records = 0;
  uint64_t bytes_read = 0;
};

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

// Every librados failure goes through here: code by errno, store and what in
// the message.
#define RADOS_ERROR(r, ...)                                             \
  absl::Status(CodeOf(r), absl::StrCat("session store ", where_, ": ", \
                                       __VA_ARGS__, ": ", std::strerror(-(r))))

absl::StatusOr<RadosSessionStore::Meta> RadosSessionStore::ReadMeta(
    std::string_view id, bool with_records) const {
  librados::ObjectReadOperation op;
  bufferlist data;
  std::map<std::string, bufferlist> attrs;
  std::map<std::string, bufferlist> omap;
  bool more = false;
  int data_r = 0, attrs_r = 0, omap_r = 0;
  op.read(0, 0, &data, &data_r);
  op.getxattrs(&attrs, &attrs_r);
  if (with_records) {
    op.omap_get_vals2("", kMaxChainRecords, &omap, &more, &omap_r);
  }
  const int r = cluster_->io.operate(MetaObject(id), &op, nullptr);
  Meta meta;
  if (r == -ENOENT) return meta;
  if (r < 0) {
    return RADOS_ERROR(r, "reading metadata of session ", Sv(id));
  }
  meta.exists = true;
  auto u64 = [&](const char* name, uint64_t* out) {
    auto it = attrs.find(name);
    if (it == attrs.end() || it->second.length() == 0) return true;
    return absl::SimpleAtoi(Sv(View(it->second)), out);
  };
  if (!u64(kVersionXattr, &meta.version) || !u64(kEpochXattr, &meta.epoch)) {
    meta.has_session = true;
    meta.header_status = absl::DataLossError(
        absl::StrCat("session ", Sv(id), " header: unreadable xattrs"));
    return meta;
  }
  if (data.length() == 0) return meta;  // claimed (epoch), or deleted
  meta.has_session = true;
  absl::StatusOr<snap::SessionHeader> h = snap::DecodeSessionHeader(View(data));
  if (!h.ok()) {
    meta.header_status =
        snap::Annotate(h.status(), absl::StrCat("session ", Sv(id), " header"));
  } else if (h->info.id != id) {
    meta.header_status = absl::DataLossError(absl::StrCat(
        "session ", Sv(id), " header names session ", h->info.id));
  } else if (h->info.version != meta.version) {
    meta.header_status = absl::DataLossError(
        absl::StrCat("session ", Sv(id), " header says version ",
                     h->info.version, ", its version xattr ", meta.version));
  } else {
    meta.header = *std::move(h);
  }
  for (auto& [key, value] : omap) {
    uint64_t seq = 0;
    const std::string_view v = View(value);
    const size_t colon = v.find(':');
    Meta::Ref ref;
    if (!absl::SimpleHexAtoi(key, &seq) || colon == std::string_view::npos ||
        !absl::SimpleAtoi(Sv(v.substr(colon + 1)), &ref.chunks)) {
      meta.records_status = absl::DataLossError(absl::StrCat(
          "session ", Sv(id), " record map: bad entry '", key, "'"));
      break;
    }
    ref.token = std::string(v.substr(0, colon));
    meta.records.emplace(seq, std::move(ref));
  }
  return meta;
}

absl::StatusOr<RadosSessionStore::Chain> RadosSessionStore::ReadChain(
    const Meta& meta, ChainRead mode) const {
  SINKSERVE_RETURN_IF_ERROR(meta.records_status);
  const snap::SessionHeader& header = meta.header;
  const std::string& id = header.info.id;
  const uint64_t base = header.base_seq;
  const uint64_t last = header.info.version;
  if (last < base || last - base >= kMaxChainRecords) {
    return absl::DataLossError(absl::StrCat("session ", id, ": header chain ",
                                            base, "..", last, " is invalid"));
  }
  auto ctx_of = [&](uint64_t seq) {
    return absl::StrCat("session ", id, " record ", seq);
  };
  // Every record object the chain needs, read in parallel: first the
  // records, then (they say how many) their K/V chunks.
  const size_t n = last - base + 1;
  std::vector<const Meta::Ref*> refs(n);
  for (uint64_t seq = base; seq <= last; ++seq) {
    auto it = meta.records.find(seq);
    if (it == meta.records.end()) {
      return absl::DataLossError(
          absl::StrCat(ctx_of(seq), " is missing from its record map"));
    }
    refs[seq - base] = &it->second;
  }
  if (meta.records.size() != n) {
    return absl::DataLossError(
        absl::StrCat("session ", id, ": record map holds ",
                     meta.records.size(), " records, its chain ", n));
  }
  struct Read {
    bufferlist bl;
    int r = 0;
    Completion c;
  };
  auto read_all = [&](std::vector<std::string> oids,
                      std::vector<std::unique_ptr<Read>>* reads) {
    reads->clear();
    for (const std::string& oid : oids) {
      auto read = std::make_unique<Read>();
      read->r = cluster_->io.aio_read(oid, read->c.c, &read->bl, 0, 0);
      reads->push_back(std::move(read));
    }
    for (auto& read : *reads) {
      if (read->r >= 0) read->r = read->c.Wait();
    }
  };
  Chain result;
  auto value_of = [&](Read& read,
                      const std::string& what) -> absl::StatusOr<std::string_view> {
    if (read.r == -ENOENT) {
      return absl::DataLossError(absl::StrCat(what, " is missing"));
    }
    if (read.r < 0) return RADOS_ERROR(read.r, "reading ", what);
    result.bytes_read += read.bl.length();
    return View(read.bl);
  };

  std::vector<std::string> oids;
  for (uint64_t seq = base; seq <= last; ++seq) {
    oids.push_back(RecordObject(id, refs[seq - base]->token, 0));
  }
  std::vector<std::unique_ptr<Read>> bodies;
  read_all(std::move(oids), &bodies);

  struct Decoded {
    SessionState full;
    SessionDelta delta;
    snap::RecordInfo info;
  };
  std::vector<Decoded> decoded(n);
  int64_t cell_bytes = 0;
  for (uint64_t seq = base; seq <= last; ++seq) {
    const std::string ctx = ctx_of(seq);
    Decoded& d = decoded[seq - base];
    SINKSERVE_ASSIGN_OR_RETURN(std::string_view body,
                               value_of(*bodies[seq - base], ctx));
    if (seq == base) {
      absl::StatusOr<snap::FullStateRecord> rec = snap::DecodeFullState(body);
      if (!rec.ok()) return snap::Annotate(rec.status(), ctx);
      d.full = std::move(rec->state);
      d.info = std::move(rec->info);
      if (absl::Status valid = d.full.ValidateMetadata(); !valid.ok()) {
        return absl::DataLossError(
            absl::StrCat(ctx, ": not a valid state: ", valid.message()));
      }
      cell_bytes = d.full.kv_shape.cell_bytes();
    } else {
      absl::StatusOr<snap::DeltaRecord> rec = snap::DecodeDelta(body);
      if (!rec.ok()) return snap::Annotate(rec.status(), ctx);
      d.delta = std::move(rec->delta);
      d.info = std::move(rec->info);
    }
    bodies[seq - base]->bl.clear();
    if (d.info.id != id || d.info.seq != seq) {
      return absl::DataLossError(absl::StrCat(
          ctx, " says it is record ", d.info.seq, " of session ", d.info.id));
    }
    if (d.info.kv_chunks != refs[seq - base]->chunks) {
      return absl::DataLossError(absl::StrCat(
          ctx, " has ", d.info.kv_chunks, " kv chunks, its record map says ",
          refs[seq - base]->chunks));
    }
    const int64_t kv_cells =
        seq == base ? static_cast<int64_t>(d.full.cache.cells.size())
                    : d.delta.kv_cells();
    if (d.info.kv_bytes % cell_bytes != 0 ||
        d.info.kv_bytes / cell_bytes != static_cast<uint64_t>(kv_cells)) {
      return absl::DataLossError(absl::StrCat(ctx, ": ", d.info.kv_bytes,
                                              " kv bytes for ", kv_cells,
                                              " cells of ", cell_bytes));
    }
  }

  std::vector<std::string> kv(n);
  if (mode != ChainRead::kMetadata) {
    oids.clear();
    for (uint64_t seq = base; seq <= last; ++seq) {
      for (uint32_t part = 1; part <= decoded[seq - base].info.kv_chunks;
           ++part) {
        oids.push_back(RecordObject(id, refs[seq - base]->token, part));
      }
    }
    std::vector<std::unique_ptr<Read>> chunks;
    read_all(std::move(oids), &chunks);
    size_t next = 0;
    for (uint64_t seq = base; seq <= last; ++seq) {
      const snap::RecordInfo& info = decoded[seq - base].info;
      if (mode == ChainRead::kFull) kv[seq - base].reserve(info.kv_bytes);
      uint64_t got = 0;
      for (uint32_t part = 1; part <= info.kv_chunks; ++part) {
        const std::string chunk_ctx = absl::StrCat(
            ctx_of(seq), " kv chunk ", part, " of ", info.kv_chunks);
        Read& read = *chunks[next++];
        SINKSERVE_ASSIGN_OR_RETURN(std::string_view value,
                                   value_of(read, chunk_ctx));
        absl::StatusOr<std::string_view> data =
            snap::DecodeKvChunk(value, seq, part);
        if (!data.ok()) return snap::Annotate(data.status(), chunk_ctx);
        got += data->size();
        if (mode == ChainRead::kFull && got <= info.kv_bytes) {
          kv[seq - base].append(data->data(), data->size());
        }
        read.bl.clear();
      }
      if (got != info.kv_bytes) {
        return absl::DataLossError(absl::StrCat(ctx_of(seq), ": kv chunks hold ",
                                                got, " bytes, the record says ",
                                                info.kv_bytes));
      }
    }
  }

  std::optional<StateReplayer> replayer;
  for (uint64_t seq = base; seq <= last; ++seq) {
    Decoded& d = decoded[seq - base];
    ++result.records;
    if (seq == base) {
      d.full.kv = std::move(kv[0]);
      replayer.emplace(std::move(d.full), mode == ChainRead::kFull);
    } else {
      absl::Status applied =
          replayer->Apply(d.delta, std::move(kv[seq - base]));
      if (!applied.ok()) {
        return absl::DataLossError(absl::StrCat(
            ctx_of(seq), ": delta does not apply: ", applied.message()));
      }
    }
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
        "session ", id, ": header (", i.cells, " cells, ", i.tokens_seen,
        " tokens, ", i.rounds, " rounds) and records (", s.cache.cells.size(),
        " cells, ", s.cache.tokens_seen, " tokens, ", s.rounds,
        " rounds) disagree"));
  }
  return result;
}

absl::StatusOr<std::string> RadosSessionStore::WriteRecord(
    std::string_view id, uint64_t seq, const std::string& record,
    std::string_view kv, uint64_t* bytes) const {
  const std::string token = absl::StrFormat("%016x", RandomU64());
  const uint64_t chunk = options_.kv_chunk_bytes;
  const uint32_t chunks = snap::KvChunkCount(kv.size(), chunk);
  struct Write {
    std::string prefix;
    Completion c;
    int r = 0;
  };
  std::vector<std::unique_ptr<Write>> writes;
  for (uint32_t part = 0; part <= chunks; ++part) {
    auto w = std::make_unique<Write>();
    bufferlist bl;
    if (part == 0) {
      bl = StaticBl(record);
    } else {
      const std::string_view data = kv.substr((part - 1) * chunk, chunk);
      w->prefix = snap::KvChunkPrefix(seq, part, data);
      bl = StaticBl(w->prefix);
      bufferlist rows = StaticBl(data);
      bl.claim_append(rows);
    }
    *bytes += bl.length();
    w->r = cluster_->io.aio_write_full(RecordObject(id, token, part), w->c.c,
                                       bl);
    writes.push_back(std::move(w));
  }
  int failed = 0;
  for (auto& w : writes) {
    if (w->r >= 0) w->r = w->c.Wait();
    if (w->r < 0 && failed == 0) failed = w->r;
  }
  if (failed < 0) {
    RemoveRecords(id, token, chunks);
    return RADOS_ERROR(failed, "writing record ", seq, " of session ", Sv(id));
  }
  return token;
}

void RadosSessionStore::RemoveRecords(std::string_view id,
                                      std::string_view token,
                                      uint32_t parts) const {
  std::vector<std::unique_ptr<Completion>> removes;
  for (uint32_t part = 0; part <= parts; ++part) {
    auto c = std::make_unique<Completion>();
    if (cluster_->io.aio_remove(RecordObject(id, token, part), c->c) >= 0) {
      removes.push_back(std::move(c));
    }
  }
  for (auto& c : removes) c->Wait();
}

void RadosSessionStore::SetFence(std::string_view id, uint64_t epoch) {
  absl::MutexLock lock(&fences_mu_);
  fences_.insert_or_assign(std::string(id), epoch);
}

void RadosSessionStore::ClearFence(std::string_view id) {
  absl::MutexLock lock(&fences_mu_);
  if (auto it = fences_.find(id); it != fences_.end()) fences_.erase(it);
}

void RadosSessionStore::RequireFences() {
  absl::MutexLock lock(&fences_mu_);
  require_fences_ = true;
}

absl::StatusOr<uint64_t> RadosSessionStore::FenceFor(std::string_view id) const {
  absl::MutexLock lock(&fences_mu_);
  if (auto it = fences_.find(id); it != fences_.end()) return it->second;
  if (require_fences_) {
    return FencedError(absl::StrCat("fenced: session ", Sv(id),
                                    " is not held by this server (no lease)"));
  }
  return options_.fence;
}

absl::Status RadosSessionStore::Refused(std::string_view id,
                                        std::string_view what, uint64_t fence,
                                        uint64_t expected_version) const {
  counters_.lost_races.fetch_add(1, std::memory_order_relaxed);
  absl::StatusOr<Meta> now = ReadMeta(id, /*with_records=*/false);
  if (now.ok() && fence != 0 && now->epoch != fence) {
    counters_.fenced_writes.fetch_add(1, std::memory_order_relaxed);
    return FencedError(absl::StrCat(
        "fenced: ", Sv(what), " of session ", Sv(id),
        " refused: it is owned at epoch ", now->epoch,
        " and this server writes at epoch ", fence));
  }
  if (now.ok() && !now->has_session) {
    return absl::NotFoundError(absl::StrCat(Sv(what), " of session ", Sv(id),
                                            ": it was deleted meanwhile"));
  }
  return absl::AbortedError(absl::StrCat(
      Sv(what), " of session ", Sv(id), ": it was made against version ",
      expected_version, " but the session is at version ",
      now.ok() ? absl::StrCat(now->version) : std::string("(unknown)"),
      "; load it again or write a full snapshot"));
}

namespace {

// The guards every commit on a meta object starts with.
void Guard(librados::ObjectWriteOperation* op, uint64_t fence,
           std::optional<uint64_t> version) {
  if (fence != 0) op->cmpxattr(kEpochXattr, LIBRADOS_CMPXATTR_OP_EQ, fence);
  if (version) op->cmpxattr(kVersionXattr, LIBRADOS_CMPXATTR_OP_EQ, *version);
}

snap::SessionHeader HeaderFor(const SessionState& s, uint64_t incarnation,
                              uint64_t base_seq, uint64_t version) {
  snap::SessionHeader h;
  h.info = SessionInfo::Of(s);
  h.info.version = version;
  h.info.deltas = static_cast<int64_t>(version - base_seq);
  h.incarnation = incarnation;
  h.base_seq = base_seq;
  return h;
}

}  // namespace

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
        snap::EncodeSessionHeader(HeaderFor(state, incarnation, seq, seq));
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
    const std::string header = snap::EncodeSessionHeader(HeaderFor(
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

absl::StatusOr<uint64_t> RadosSessionStore::Epoch(std::string_view id) const {
  SINKSERVE_RETURN_IF_ERROR(ValidateSessionId(id));
  SINKSERVE_ASSIGN_OR_RETURN(Meta meta, ReadMeta(id, /*with_records=*/false));
  return meta.epoch;
}

absl::StatusOr<uint64_t> RadosSessionStore::BumpEpoch(std::string_view id,
                                                      uint64_t expected) {
  SINKSERVE_RETURN_IF_ERROR(ValidateSessionId(id));
  const std::string oid = MetaObject(id);
  int r = -EEXIST;
  if (expected == 0) {
    // No meta object is epoch 0 too: create an empty one that holds only the
    // claim (no session yet), with both xattrs for later compares.
    librados::ObjectWriteOperation create;
    create.create(/*exclusive=*/true);
    create.setxattr(kEpochXattr, U64Bl(1));
    create.setxattr(kVersionXattr, U64Bl(0));
    r = cluster_->io.operate(oid, &create);
  }
  if (r == -EEXIST) {
    librados::ObjectWriteOperation op;
    op.cmpxattr(kEpochXattr, LIBRADOS_CMPXATTR_OP_EQ, expected);
    op.setxattr(kEpochXattr, U64Bl(expected + 1));
    r = cluster_->io.operate(oid, &op);
  }
  if (r == -ECANCELED || r == -ENOENT || r == -ENODATA) {
    absl::StatusOr<uint64_t> now = Epoch(id);
    return absl::AbortedError(absl::StrCat(
        "epoch of session ", Sv(id), " is ",
        now.ok() ? absl::StrCat(*now) : std::string("unknown"), ", not ",
        expected, "; another owner took it"));
  }
  if (r < 0) return RADOS_ERROR(r, "bumping the epoch of session ", Sv(id));
  return expected + 1;
}

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

#undef RADOS_ERROR

}  // namespace sinkserve::memory
