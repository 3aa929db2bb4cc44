#include "service/security/caller.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "memory/session_state.h"

namespace sinkserve::service::security {

absl::StatusOr<Role> ParseRole(std::string_view name) {
  if (name == "user") return Role::kUser;
  if (name == "admin") return Role::kAdmin;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown role '", absl::string_view(name.data(), name.size()), "' (user, admin)"));
}

const char* RoleName(Role role) { return role == Role::kAdmin ? "admin" : "user"; }

absl::Status ValidateClientSessionId(std::string_view id) {
  if (id.find(memory::kTenantSeparator) != std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("session id may only hold printable ASCII without spaces, got byte ",
                     static_cast<int>(memory::kTenantSeparator)));
  }
  return memory::ValidateSessionId(id);
}

std::string ScopedId(std::string_view tenant, std::string_view id) {
  const absl::string_view t(tenant.data(), tenant.size());
  const absl::string_view i(id.data(), id.size());
  if (t == kDefaultTenant) return std::string(i);
  return absl::StrCat(t, absl::string_view(&memory::kTenantSeparator, 1), i);
}

TenantAndId SplitScopedId(std::string_view scoped) {
  const size_t sep = scoped.find(memory::kTenantSeparator);
  if (sep == std::string_view::npos) return {kDefaultTenant, std::string(scoped)};
  return {std::string(scoped.substr(0, sep)), std::string(scoped.substr(sep + 1))};
}

absl::Status Unscoped(const absl::Status& status, std::string_view scoped, std::string_view plain) {
  if (status.ok() || scoped == plain) return status;
  return absl::Status(
      status.code(),
      absl::StrReplaceAll(status.message(), {{absl::string_view(scoped.data(), scoped.size()),
                                              absl::string_view(plain.data(), plain.size())}}));
}

}  // namespace sinkserve::service::security
