// Authenticator: turns a call's `authorization` metadata into a Caller, or a
// refusal. Runs first in every SinkServe RPC (health and the replicas'
// handoff calls, which carry a lease cookie, are not SinkServe RPCs).
#ifndef SINKSERVE_SERVICE_SECURITY_AUTHENTICATOR_H_
#define SINKSERVE_SERVICE_SECURITY_AUTHENTICATOR_H_

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "service/security/api_keys.h"
#include "service/security/caller.h"
#include "service/security/jwt.h"

namespace sinkserve::service::security {

enum class AuthMode {
  kNone,           // every caller is the default tenant's user (development only)
  kApiKeys,        // bearer API keys from a key file
  kJwt,            // bearer JWTs signed by a key of a JWKS file
  kApiKeysAndJwt,  // either (a token with dots is a JWT)
};

// "none" / "api-keys" / "jwt" / "api-keys,jwt"; INVALID_ARGUMENT otherwise.
absl::StatusOr<AuthMode> ParseAuthMode(std::string_view name);
const char* AuthModeName(AuthMode mode);

struct AuthOptions {
  // Default: kNone.
  AuthMode mode = AuthMode::kNone;
  // kApiKeys: the key file (api_keys.h). Default: "".
  std::string api_keys;
  // kJwt: the JWKS file of the issuer's public keys, and what the tokens
  // must say (jwt.h). Default: "".
  std::string jwks;
  JwtOptions jwt;
};

struct AuthOutcome {
  std::optional<Caller> caller;  // empty when refused
  std::string reason;            // why it was refused (server side only)
};

class Authenticator {
 public:
  static absl::StatusOr<std::unique_ptr<Authenticator>> Create(const AuthOptions& options);

  // The caller of a call whose `authorization` metadata is `authorization`
  // (nullopt: none sent; several values are refused before this).
  AuthOutcome Authenticate(std::optional<std::string_view> authorization) const;

  // Re-reads the key file and the JWKS (SIGHUP). On an error the old ones
  // stay in force.
  absl::Status Reload();

  // Whether `caller`, admitted earlier, may no longer call: its API key's
  // line left the file at a reload, or its JWT expired by `now`.
  bool Revoked(const Caller& caller, absl::Time now) const;

  AuthMode mode() const { return options_.mode; }
  size_t keys() const;

 private:
  explicit Authenticator(AuthOptions options) : options_(std::move(options)) {}

  const AuthOptions options_;
  mutable std::mutex mu_;
  std::shared_ptr<const ApiKeyTable> keys_;  // guarded by mu_ (the pointer)
  std::shared_ptr<const JwtVerifier> jwt_;   // guarded by mu_ (the pointer)
};

}  // namespace sinkserve::service::security

#endif  // SINKSERVE_SERVICE_SECURITY_AUTHENTICATOR_H_
