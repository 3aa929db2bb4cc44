// Status propagation macros. Abseil 20220623 (the one Debian's gRPC is built
// with) has no ABSL_RETURN_IF_ERROR, so sinkserve carries these two. memory/ is
// the lowest layer of the project, so every module can include this header.
#ifndef SINKSERVE_MEMORY_STATUS_MACROS_H_
#define SINKSERVE_MEMORY_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define SINKSERVE_CONCAT_INNER_(a, b) a##b
#define SINKSERVE_CONCAT_(a, b) SINKSERVE_CONCAT_INNER_(a, b)

// Returns from the current function if `expr` (an absl::Status) is not OK.
#define SINKSERVE_RETURN_IF_ERROR(expr)                 \
  do {                                                  \
    const ::absl::Status sinkserve_status_ = (expr);    \
    if (!sinkserve_status_.ok()) return sinkserve_status_; \
  } while (0)

// `lhs` = value of `rexpr` (an absl::StatusOr<T>), or return its status.
#define SINKSERVE_ASSIGN_OR_RETURN(lhs, rexpr) \
  SINKSERVE_ASSIGN_OR_RETURN_IMPL_(            \
      SINKSERVE_CONCAT_(sinkserve_statusor_, __LINE__), lhs, rexpr)

#define SINKSERVE_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                                     \
  if (!tmp.ok()) return tmp.status();                     \
  lhs = std::move(tmp).value()

#endif  // SINKSERVE_MEMORY_STATUS_MACROS_H_
