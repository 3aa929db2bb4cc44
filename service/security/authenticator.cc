#include "service/security/authenticator.h"

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "service/security/bearer.h"

namespace sinkserve::service::security {
namespace {

bool UsesKeys(AuthMode mode) {
  return mode == AuthMode::kApiKeys || mode == AuthMode::kApiKeysAndJwt;
}
bool UsesJwt(AuthMode mode) { return mode == AuthMode::kJwt || mode == AuthMode::kApiKeysAndJwt; }

absl::StatusOr<std::string> ReadFile(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", what, " ", path));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

absl::StatusOr<AuthMode> ParseAuthMode(std::string_view name) {
  if (name == "none") return AuthMode::kNone;
  if (name == "api-keys") return AuthMode::kApiKeys;
  if (name == "jwt") return AuthMode::kJwt;
  if (name == "api-keys,jwt" || name == "jwt,api-keys") return AuthMode::kApiKeysAndJwt;
  return absl::InvalidArgumentError(absl::StrCat("--auth ",
                                                 absl::string_view(name.data(), name.size()),
                                                 ": expected none, api-keys, jwt or api-keys,jwt"));
}

const char* AuthModeName(AuthMode mode) {
  switch (mode) {
    case AuthMode::kApiKeys:
      return "api-keys";
    case AuthMode::kJwt:
      return "jwt";
    case AuthMode::kApiKeysAndJwt:
      return "api-keys,jwt";
    case AuthMode::kNone:
      break;
  }
  return "none";
}

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::Create(const AuthOptions& options) {
  if (UsesKeys(options.mode) != !options.api_keys.empty()) {
    return absl::InvalidArgumentError(UsesKeys(options.mode)
                                          ? "--auth api-keys needs --api-keys FILE"
                                          : "--api-keys is given but --auth does not use api-keys");
  }
  if (UsesJwt(options.mode) != !options.jwks.empty()) {
    return absl::InvalidArgumentError(UsesJwt(options.mode)
                                          ? "--auth jwt needs --jwks FILE"
                                          : "--jwks is given but --auth does not use jwt");
  }
  auto auth = std::unique_ptr<Authenticator>(new Authenticator(options));
  if (absl::Status s = auth->Reload(); !s.ok()) return s;
  return auth;
}

absl::Status Authenticator::Reload() {
  std::shared_ptr<const ApiKeyTable> keys;
  std::shared_ptr<const JwtVerifier> jwt;
  if (UsesKeys(options_.mode)) {
    absl::StatusOr<ApiKeyTable> table = ApiKeyTable::Load(options_.api_keys);
    if (!table.ok()) return table.status();
    keys = std::make_shared<const ApiKeyTable>(*std::move(table));
  }
  if (UsesJwt(options_.mode)) {
    absl::StatusOr<std::string> jwks = ReadFile(options_.jwks, "--jwks");
    if (!jwks.ok()) return jwks.status();
    absl::StatusOr<std::unique_ptr<JwtVerifier>> verifier =
        JwtVerifier::Create(*jwks, options_.jwt);
    if (!verifier.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--jwks ", options_.jwks, ": ", verifier.status().message()));
    }
    jwt = *std::move(verifier);
  }
  std::lock_guard<std::mutex> lock(mu_);
  keys_ = std::move(keys);
  jwt_ = std::move(jwt);
  return absl::OkStatus();
}

bool Authenticator::Revoked(const Caller& caller, absl::Time now) const {
  if (now > caller.expires) return true;
  if (!caller.api_key) return false;
  std::lock_guard<std::mutex> lock(mu_);
  return keys_ == nullptr || !keys_->Admits(caller);
}

size_t Authenticator::keys() const {
  std::lock_guard<std::mutex> lock(mu_);
  return (keys_ != nullptr ? keys_->size() : 0) + (jwt_ != nullptr ? jwt_->keys() : 0);
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
  std::shared_ptr<const JwtVerifier> jwt;
  {
    std::lock_guard<std::mutex> lock(mu_);
    keys = keys_;
    jwt = jwt_;
  }
  // API keys never hold a dot; a JWT always holds two.
  if (token->find('.') != std::string_view::npos) {
    if (jwt == nullptr) {
      outcome.reason = "a JWT, but --auth does not take JWTs";
      return outcome;
    }
    absl::StatusOr<Caller> caller = jwt->Verify(*token, absl::Now());
    if (caller.ok()) {
      outcome.caller = *std::move(caller);
    } else {
      outcome.reason = std::string(caller.status().message());
    }
    return outcome;
  }
  if (keys == nullptr) {
    outcome.reason = "an API key, but --auth does not take API keys";
    return outcome;
  }
  outcome.caller = keys->Find(*token);
  if (!outcome.caller.has_value()) outcome.reason = "unknown API key";
  return outcome;
}

}  // namespace sinkserve::service::security
