#include "memory/rados_session_store.h"

#include <rados/librados.hpp>

#include "memory/session_leases.h"
#include "memory/rados_store_internal.h"
#include "memory/status_macros.h"

namespace sinkserve::memory {

// This store's own helpers (rados_store_internal.h), in every one of its files.
using namespace rados_internal;  // NOLINT(build/namespaces)

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

}  // namespace sinkserve::memory
