// Test issuers for JWT tests, benchmarks and fuzzing: RSA and P-256 key
// pairs, their public JWKs, and compact JWS tokens signed with OpenSSL.
// Test-only (sinkserve_security_testing / :jwt_testing).
#ifndef SINKSERVE_SERVICE_SECURITY_JWT_TESTING_H_
#define SINKSERVE_SERVICE_SECURITY_JWT_TESTING_H_

#include <string>
#include <string_view>

typedef struct evp_pkey_st EVP_PKEY;

namespace sinkserve::service::security::jwt_testing {

// Unpadded base64url (RFC 7515).
std::string B64Url(std::string_view bytes);

class TestSigner {
 public:
  // A fresh P-256 key (ES256) or RSA key of `rsa_bits` (RS256).
  static TestSigner Ec(std::string kid);
  static TestSigner Rsa(std::string kid, int rsa_bits = 2048);
  TestSigner(TestSigner&& other) noexcept;
  TestSigner& operator=(TestSigner&&) = delete;
  ~TestSigner();

  const std::string& kid() const { return kid_; }
  const char* alg() const { return ec_ ? "ES256" : "RS256"; }
  // The public key as a JWK object ({"kty":...}).
  std::string Jwk() const;
  // The JWS signature of `input`: PKCS#1 v1.5 for RSA, r || s for EC.
  std::string Sign(std::string_view input) const;
  // header.claims.signature for the given JSON texts.
  std::string Token(std::string_view header_json, std::string_view claims_json) const;
  // The same with the header {"alg": alg or this key's, "typ":"JWT","kid"}.
  std::string TokenFor(std::string_view claims_json, std::string_view alg = "") const;

 private:
  TestSigner(std::string kid, bool ec, EVP_PKEY* key) : kid_(std::move(kid)), ec_(ec), key_(key) {}

  std::string kid_;
  bool ec_;
  EVP_PKEY* key_;
};

}  // namespace sinkserve::service::security::jwt_testing

#endif  // SINKSERVE_SERVICE_SECURITY_JWT_TESTING_H_
