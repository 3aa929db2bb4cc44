// Who is calling: the tenant a credential maps to and what it may do, and how
// a tenant's session ids become the store's (scoped) ids.
#ifndef SINKSERVE_SERVICE_SECURITY_CALLER_H_
#define SINKSERVE_SERVICE_SECURITY_CALLER_H_

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace sinkserve::service::security {

// The tenant of every session created before tenants existed, and of every
// caller of a server running with `--auth none`. Its sessions keep their
// plain ids in the store, so no data moves when authentication is turned on.
inline constexpr char kDefaultTenant[] = "default";

enum class Role {
  kUser,   // its own tenant's sessions only
  kAdmin,  // may also list, read and delete other tenants' sessions (audited)
};

// "user" / "admin"; INVALID_ARGUMENT otherwise.
absl::StatusOr<Role> ParseRole(std::string_view name);
const char* RoleName(Role role);

struct Caller {
  std::string tenant = kDefaultTenant;
  Role role = Role::kUser;
  // Which credential it presented (an API key's name, a JWT's subject), for
  // the audit log; never the secret. "" with --auth none.
  std::string credential;
  // Whether it presented an API key (revocable while its calls run).
  bool api_key = false;
  // When its credential stops being valid (a JWT's exp plus leeway).
  absl::Time expires = absl::InfiniteFuture();
};

// A session id as a client sends it: memory::ValidateSessionId's plain
// form (a scoped id from a client would name another tenant's session).
absl::Status ValidateClientSessionId(std::string_view id);

// The store id of tenant `tenant`'s session `id` (memory::ValidateSessionId:
// TENANT 0x1F ID, or the plain id for the default tenant).
std::string ScopedId(std::string_view tenant, std::string_view id);

struct TenantAndId {
  std::string tenant;
  std::string id;
};
// The inverse of ScopedId.
TenantAndId SplitScopedId(std::string_view scoped);

// `status` with every mention of `scoped` replaced by `plain`: what the
// service layer returns to a caller who named the plain id.
absl::Status Unscoped(const absl::Status& status, std::string_view scoped, std::string_view plain);

}  // namespace sinkserve::service::security

#endif  // SINKSERVE_SERVICE_SECURITY_CALLER_H_
