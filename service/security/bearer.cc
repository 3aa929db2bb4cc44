#include "service/security/bearer.h"

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"

namespace sinkserve::service::security {
namespace {

bool IsTokenChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_' ||
         c == '~' || c == '+' || c == '/';
}

}  // namespace

absl::StatusOr<std::string_view> ParseBearer(std::string_view value) {
  if (value.size() > kMaxAuthorizationBytes) {
    return absl::UnauthenticatedError("authorization value too long");
  }
  constexpr std::string_view kScheme = "bearer";
  if (value.size() <= kScheme.size() ||
      !absl::EqualsIgnoreCase(absl::string_view(value.data(), kScheme.size()), "bearer") ||
      value[kScheme.size()] != ' ') {
    return absl::UnauthenticatedError("authorization is not 'Bearer <token>'");
  }
  std::string_view token = value.substr(kScheme.size());
  while (!token.empty() && token.front() == ' ') token.remove_prefix(1);
  size_t i = 0;
  while (i < token.size() && IsTokenChar(token[i])) ++i;
  if (i == 0) return absl::UnauthenticatedError("empty bearer token");
  while (i < token.size() && token[i] == '=') ++i;
  if (i != token.size()) {
    return absl::UnauthenticatedError("bearer token holds a character outside b64token");
  }
  return token;
}

}  // namespace sinkserve::service::security
