// Internals of RadosSessionStore shared by its files (rados_session_store.cc:
// writes, loads, listing; rados_store_chain.cc: reading and writing record
// objects; rados_store_fencing.cc: fences and epochs;
// rados_store_compaction.cc: background folds). Not for use elsewhere.
#ifndef SINKSERVE_MEMORY_RADOS_STORE_INTERNAL_H_
#define SINKSERVE_MEMORY_RADOS_STORE_INTERNAL_H_

#include <rados/librados.hpp>

#include <cerrno>
#include <cstring>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "memory/rados_cluster.h"
#include "memory/rados_session_store.h"
#include "memory/snapshot_format.h"

namespace sinkserve::memory {

namespace snap = ::sinkserve::memory::snapshot;

namespace rados_internal {

using librados::bufferlist;

inline constexpr int kMaxListPage = 10000;
// Record maps never get near this: a chain is folded every few deltas.
inline constexpr uint64_t kMaxChainRecords = 1 << 20;
// Put retries when another writer keeps moving the session under it.
inline constexpr int kPutAttempts = 5;
// Loads retry when a fold or Put removed records they were about to read.
inline constexpr int kLoadAttempts = 4;

inline constexpr char kVersionXattr[] = "version";
inline constexpr char kEpochXattr[] = "epoch";

inline absl::string_view Sv(std::string_view s) { return {s.data(), s.size()}; }

inline uint64_t RandomU64() {
  thread_local std::mt19937_64 rng(std::random_device{}() ^
                                   static_cast<uint64_t>(
                                       absl::ToUnixNanos(absl::Now())));
  return rng();
}

// librados error (negative errno) -> what a caller should do about it.
inline absl::StatusCode CodeOf(int r) {
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

inline std::string SeqKey(uint64_t seq) { return absl::StrFormat("%016x", seq); }

inline bufferlist Bl(std::string_view s) {
  bufferlist bl;
  bl.append(s.data(), s.size());
  return bl;
}

inline bufferlist U64Bl(uint64_t v) { return Bl(absl::StrCat(v)); }

// The rows of a K/V chunk go to librados without a copy: the buffer is only
// read, and every write that uses it is waited for before it goes away.
inline bufferlist StaticBl(std::string_view s) {
  bufferlist bl;
  if (!s.empty()) {
    bl.append(ceph::buffer::ptr(ceph::buffer::create_static(
        static_cast<unsigned>(s.size()), const_cast<char*>(s.data()))));
  }
  return bl;
}

inline std::string_view View(bufferlist& bl) {
  return bl.length() == 0 ? std::string_view()
                          : std::string_view(bl.c_str(), bl.length());
}

// A record map value: "<token>:<kv chunks>".
inline std::string RecordRef(std::string_view token, uint32_t chunks) {
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

// The guards every commit on a meta object starts with.
inline void Guard(librados::ObjectWriteOperation* op, uint64_t fence,
                  std::optional<uint64_t> version) {
  if (fence != 0) op->cmpxattr(kEpochXattr, LIBRADOS_CMPXATTR_OP_EQ, fence);
  if (version) op->cmpxattr(kVersionXattr, LIBRADOS_CMPXATTR_OP_EQ, *version);
}

}  // namespace rados_internal

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

}  // namespace sinkserve::memory

// Every librados failure goes through here: code by errno, store and what in
// the message.
#define RADOS_ERROR(r, ...)                                             \
  absl::Status(CodeOf(r), absl::StrCat("session store ", where_, ": ", \
                                       __VA_ARGS__, ": ", std::strerror(-(r))))

#endif  // SINKSERVE_MEMORY_RADOS_STORE_INTERNAL_H_
