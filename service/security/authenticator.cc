#include "service/security/authenticator.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "service/security/bearer.h"

namespace sinkserve::service::security {

absl::StatusOr<AuthMode> ParseAuthMode(std::string_view name) {
  if (name == "none") return AuthMode::kNone;
  if (name == "api-keys") return AuthMode::kApiKeys;
  return absl::InvalidArgumentError(absl::StrCat(
      "--auth ", absl::string_view(name.data(), name.size()), ": expected none or api-keys"));
}

const char* AuthModeName(AuthMode mode) { return mode == AuthMode::kApiKeys ? "api-keys" : "none"; }

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::Create(const AuthOptions& options) {
  if (options.mode == AuthMode::kApiKeys && options.api_keys.empty()) {
    return absl::InvalidArgumentError("--auth api-keys needs --api-keys FILE");
  }
  if (options.mode == AuthMode::kNone && !options.api_keys.empty()) {
    return absl::InvalidArgumentError("--api-keys is given but --auth is none");
  }
  auto auth = std::unique_ptr<Authenticator>(new Authenticator(options));
  if (absl::Status s = auth->Reload(); !s.ok()) return s;
  return auth;
}

absl::Status Authenticator::Reload() {
  if (options_.mode != AuthMode::kApiKeys) return absl::OkStatus();
  absl::StatusOr<ApiKeyTable> table = ApiKeyTable::Load(options_.api_keys);
  if (!table.ok()) return table.status();
  auto keys = std::make_shared<const ApiKeyTable>(*std::move(table));
  std::lock_guard<std::mutex> lock(mu_);
  keys_ = std::move(keys);
  return absl::OkStatus();
}

size_t Authenticator::keys() const {
  std::lock_guard<std::mutex> lock(mu_);
  return keys_ != nullptr ? keys_->size() : 0;
}

AuthOutcome Authenticator::Authenticate(std::optional<std::string_view> authorization) const {
  AuthOutcome outcome;
  if (options_.mode == AuthMode::kNone) {
    outcome.caller = Caller();
    return outcome;
  }
  if (!authorization.has_value()) {
    outcome.reason = "no authorization metadata";
    return outcome;
  }
  absl::StatusOr<std::string_view> token = ParseBearer(*authorization);
  if (!token.ok()) {
    outcome.reason = std::string(token.status().message());
    return outcome;
  }
  std::shared_ptr<const ApiKeyTable> keys;
  {
    std::lock_guard<std::mutex> lock(mu_);
    keys = keys_;
  }
  outcome.caller = keys->Find(*token);
  if (!outcome.caller.has_value()) outcome.reason = "unknown API key";
  return outcome;
}

}  // namespace sinkserve::service::security
