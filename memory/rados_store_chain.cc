#include "memory/rados_session_store.h"

#include <rados/librados.hpp>

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "memory/rados_store_internal.h"
#include "memory/status_macros.h"

namespace sinkserve::memory {

// This store's own helpers (rados_store_internal.h), in every one of its files.
using namespace rados_internal;  // NOLINT(build/namespaces)

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

}  // namespace sinkserve::memory
