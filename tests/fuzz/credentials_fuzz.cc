// libFuzzer target: everything a caller or an operator's file hands the
// credential parsers. Input byte 0 picks the parser; the rest is its input:
//   0  an `authorization` value, through the Authenticator (API keys + JWT)
//   1  an API key file          2  a tenant limits file
//   3  a JWKS document          4  a bearer JWT
//   5  "HEADER-JSON\nCLAIMS-JSON", signed here with the issuer's key, so
//      the claim checks behind the signature are reached too.
// Run with scripts/fuzz. With SINKSERVE_CREDENTIAL_SEEDS=DIR set, the first
// call writes valid inputs of every kind there (the seed corpus).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "service/security/api_keys.h"
#include "service/security/authenticator.h"
#include "service/security/jwt.h"
#include "service/security/jwt_testing.h"
#include "service/security/tenant_limits.h"

namespace {

namespace sec = sinkserve::service::security;

// The issuer: one P-256 key, its JWKS, a verifier and an authenticator.
struct Issuer {
  sec::jwt_testing::TestSigner key = sec::jwt_testing::TestSigner::Ec("k1");
  std::string jwks = absl::StrCat(R"({"keys":[)", key.Jwk(), "]}");
  sec::JwtOptions options;
  std::unique_ptr<sec::JwtVerifier> verifier;

  Issuer() {
    options.issuer = "https://idp";
    options.audience = "sinkserve";
    verifier = *sec::JwtVerifier::Create(jwks, options);
  }

  std::string Sign(std::string_view header, std::string_view claims) const {
    return key.Token(header, claims);
  }
};

const Issuer& TheIssuer() {
  static const Issuer* issuer = new Issuer();
  return *issuer;
}

const sec::Authenticator& TheAuthenticator() {
  static const sec::Authenticator* auth = [] {
    const std::string dir = std::getenv("TMPDIR") != nullptr ? std::getenv("TMPDIR") : "/tmp";
    sec::AuthOptions options;
    options.mode = sec::AuthMode::kApiKeysAndJwt;
    options.api_keys = dir + "/credentials_fuzz_keys";
    options.jwks = dir + "/credentials_fuzz_jwks";
    std::ofstream(options.api_keys)
        << sec::ApiKeyLine("k", "sk_fuzz", "t", sec::Role::kUser) << "\n";
    std::ofstream(options.jwks) << TheIssuer().jwks;
    options.jwt = TheIssuer().options;
    return sec::Authenticator::Create(options)->release();
  }();
  return *auth;
}

std::string Claims() {
  return absl::StrCat(R"({"iss":"https://idp","aud":["sinkserve"],"tenant":"acme","exp":)",
                      absl::ToUnixSeconds(absl::Now()) + 3600, R"(,"role":"admin","sub":"s"})");
}

void WriteSeeds(const char* dir) {
  const std::string header = R"({"alg":"ES256","kid":"k1"})";
  const std::string seeds[] = {
      absl::StrCat(std::string(1, '\0'), "Bearer sk_fuzz"),
      absl::StrCat(std::string(1, '\0'), "Bearer ", TheIssuer().Sign(header, Claims())),
      absl::StrCat("\x01# keys\n", sec::ApiKeyLine("a", "sk_a", "acme", sec::Role::kAdmin), "\n"),
      "\x02"
      "acme sessions=10 streams=2 tokens_per_minute=100\nb streams=1\n",
      absl::StrCat("\x03", TheIssuer().jwks),
      absl::StrCat("\x04", TheIssuer().Sign(header, Claims())),
      absl::StrCat("\x05", header, "\n", Claims()),
  };
  int i = 0;
  for (const std::string& seed : seeds) {
    std::ofstream(absl::StrCat(dir, "/seed", i++), std::ios::binary) << seed;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static bool seeded = [] {
    if (const char* dir = std::getenv("SINKSERVE_CREDENTIAL_SEEDS")) WriteSeeds(dir);
    return true;
  }();
  (void)seeded;
  if (size == 0) return 0;
  const std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 6) {
    case 0:
      (void)TheAuthenticator().Authenticate(input);
      break;
    case 1:
      (void)sec::ApiKeyTable::Parse(input, "fuzz");
      break;
    case 2:
      (void)sec::ParseTenantLimits(input, "fuzz", sec::TenantLimits{});
      break;
    case 3:
      (void)sec::JwtVerifier::Create(input, TheIssuer().options);
      break;
    case 4:
      (void)TheIssuer().verifier->Verify(input, absl::Now());
      break;
    case 5: {
      const size_t nl = input.find('\n');
      if (nl == std::string_view::npos) break;
      const std::string token = TheIssuer().Sign(input.substr(0, nl), input.substr(nl + 1));
      (void)TheIssuer().verifier->Verify(token, absl::Now());
      break;
    }
  }
  return 0;
}
