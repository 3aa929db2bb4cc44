// JSON Web Tokens (RFC 7519) signed RS256 or ES256 (RFC 7518), verified
// against the public keys of a JWKS file (RFC 7517) with OpenSSL. Tokens of
// any other algorithm ("none", HS256, ...) are refused: a server holding only
// public keys must never accept a token it cannot tell from a forgery.
#ifndef SINKSERVE_SERVICE_SECURITY_JWT_H_
#define SINKSERVE_SERVICE_SECURITY_JWT_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "service/security/caller.h"

namespace sinkserve::service::security {

// Largest token accepted (bytes): bounds the work of a malicious caller.
inline constexpr size_t kMaxJwtBytes = 8192;

struct JwtOptions {
  // Required claims: `iss` equal to `issuer`, `aud` equal to (or an array
  // holding) `audience`. Both must be set.
  std::string issuer;
  std::string audience;
  // The claim naming the caller's tenant (a valid tenant name). Default: "tenant".
  std::string tenant_claim = "tenant";
  // `exp` and `nbf` are checked with this much clock skew allowed.
  // Default: 30 s.
  absl::Duration leeway = absl::Seconds(30);
};

class JwtVerifier {
 public:
  // Reads the public keys of a JWKS document ({"keys": [...]}: RSA keys with
  // n and e, EC P-256 keys with x and y); keys of other types are skipped.
  // INVALID_ARGUMENT when it is not JSON, has no usable key or a key is
  // malformed.
  static absl::StatusOr<std::unique_ptr<JwtVerifier>> Create(std::string_view jwks_json,
                                                             JwtOptions options);
  ~JwtVerifier();

  // The caller of `token` at time `now`: its tenant from the tenant claim,
  // role from `role` ("user" when absent), credential "jwt:" + `sub`.
  // UNAUTHENTICATED naming the first check that failed.
  absl::StatusOr<Caller> Verify(std::string_view token, absl::Time now) const;

  size_t keys() const { return keys_.size(); }

 private:
  struct Key;
  explicit JwtVerifier(JwtOptions options);

  const JwtOptions options_;
  std::vector<std::unique_ptr<Key>> keys_;
};

}  // namespace sinkserve::service::security

#endif  // SINKSERVE_SERVICE_SECURITY_JWT_H_
