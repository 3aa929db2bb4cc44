// The `authorization: Bearer <token>` call metadata (RFC 6750 section 2.1).
#ifndef SINKSERVE_SERVICE_SECURITY_BEARER_H_
#define SINKSERVE_SERVICE_SECURITY_BEARER_H_

#include <cstddef>
#include <string_view>

#include "absl/status/statusor.h"

namespace sinkserve::service::security {

// Longer values are refused unread: a JWT with a large key id is ~1 KiB.
inline constexpr size_t kMaxAuthorizationBytes = 8192;

// The token of an authorization value "Bearer <token>": the scheme in any
// case, one or more spaces, then b64token characters (A-Z a-z 0-9 - . _ ~ + /
// followed by any '='). UNAUTHENTICATED naming what is wrong (for the server
// log and the audit log; callers are told less).
absl::StatusOr<std::string_view> ParseBearer(std::string_view value);

}  // namespace sinkserve::service::security

#endif  // SINKSERVE_SERVICE_SECURITY_BEARER_H_
