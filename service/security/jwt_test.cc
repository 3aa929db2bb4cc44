#include "service/security/jwt.h"

#include <cstdint>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "service/security/jwt_testing.h"

namespace sinkserve::service::security {
namespace {

const absl::Time kNow = absl::FromUnixSeconds(1'800'000'000);

using jwt_testing::B64Url;
using jwt_testing::TestSigner;

std::string Claims(const std::string& extra = "", int64_t exp_offset = 600) {
  return absl::StrCat(R"({"iss":"https://auth.example","aud":"sinkserve","sub":"svc-7",)",
                      R"("tenant":"acme","exp":)", absl::ToUnixSeconds(kNow) + exp_offset, extra,
                      "}");
}

class JwtTest : public ::testing::Test {
 protected:
  JwtTest()
      : rsa_(TestSigner::Rsa("rsa-1")),
        ec_(TestSigner::Ec("ec-1")),
        stranger_(TestSigner::Rsa("rsa-1")) {
    JwtOptions options;
    options.issuer = "https://auth.example";
    options.audience = "sinkserve";
    absl::StatusOr<std::unique_ptr<JwtVerifier>> v =
        JwtVerifier::Create(absl::StrCat(R"({"keys":[)", rsa_.Jwk(), ",", ec_.Jwk(),
                                         R"(,{"kty":"oct","k":"c2VjcmV0"}]})"),
                            options);
    EXPECT_TRUE(v.ok()) << v.status();
    verifier_ = *std::move(v);
  }

  std::string Refusal(const std::string& token) {
    absl::StatusOr<Caller> caller = verifier_->Verify(token, kNow);
    EXPECT_FALSE(caller.ok()) << token;
    if (caller.ok()) return "";
    EXPECT_EQ(caller.status().code(), absl::StatusCode::kUnauthenticated);
    return std::string(caller.status().message());
  }

  TestSigner rsa_, ec_, stranger_;
  std::unique_ptr<JwtVerifier> verifier_;
};

TEST_F(JwtTest, AcceptsRs256AndEs256) {
  EXPECT_EQ(verifier_->keys(), 2u);  // the symmetric key is skipped
  for (const TestSigner* key : {&rsa_, &ec_}) {
    absl::StatusOr<Caller> caller = verifier_->Verify(key->TokenFor(Claims()), kNow);
    ASSERT_TRUE(caller.ok()) << caller.status();
    EXPECT_EQ(caller->tenant, "acme");
    EXPECT_EQ(caller->role, Role::kUser);
    EXPECT_EQ(caller->credential, "jwt:svc-7");
  }
  absl::StatusOr<Caller> admin =
      verifier_->Verify(rsa_.TokenFor(Claims(R"(,"role":"admin","nbf":1799999990)")), kNow);
  ASSERT_TRUE(admin.ok()) << admin.status();
  EXPECT_EQ(admin->role, Role::kAdmin);
  // aud may be an array.
  std::string claims = Claims();
  claims.replace(claims.find(R"("sinkserve")"), 11, R"(["other","sinkserve"])");
  EXPECT_TRUE(verifier_->Verify(ec_.TokenFor(claims), kNow).ok());
}

TEST_F(JwtTest, TimeClaims) {
  EXPECT_NE(Refusal(rsa_.TokenFor(Claims("", -31))).find("expired"), std::string::npos);
  EXPECT_TRUE(verifier_->Verify(rsa_.TokenFor(Claims("", -29)), kNow).ok());  // leeway
  EXPECT_NE(Refusal(rsa_.TokenFor(Claims(R"(,"nbf":1800000100)"))).find("nbf"), std::string::npos);
  // Found by credentials_fuzz: a date past int64 seconds.
  EXPECT_NE(Refusal(rsa_.TokenFor(R"({"iss":"https://auth.example","aud":"sinkserve",)"
                                  R"("tenant":"acme","exp":1e87})"))
                .find("exp"),
            std::string::npos);
  EXPECT_NE(Refusal(rsa_.TokenFor(R"({"iss":"https://auth.example","aud":"sinkserve",)"
                                  R"("tenant":"acme"})"))
                .find("exp"),
            std::string::npos);
}

TEST_F(JwtTest, WhoIssuedItAndForWhom) {
  std::string claims = Claims();
  std::string wrong_aud = claims, wrong_iss = claims;
  wrong_aud.replace(wrong_aud.find(R"("sinkserve")"), 11, R"("billing")");
  wrong_iss.replace(wrong_iss.find("auth.example"), 12, "evil.example");
  EXPECT_NE(Refusal(rsa_.TokenFor(wrong_aud)).find("audience"), std::string::npos);
  EXPECT_NE(Refusal(rsa_.TokenFor(wrong_iss)).find("issuer"), std::string::npos);
  std::string no_tenant = claims, bad_tenant = claims;
  no_tenant.replace(no_tenant.find(R"("tenant")"), 8, R"("tenantx")");
  bad_tenant.replace(bad_tenant.find(R"("acme")"), 6, R"("Ac me")");
  EXPECT_NE(Refusal(rsa_.TokenFor(no_tenant)).find("tenant"), std::string::npos);
  EXPECT_NE(Refusal(rsa_.TokenFor(bad_tenant)).find("tenant"), std::string::npos);
  EXPECT_NE(Refusal(rsa_.TokenFor(Claims(R"(,"role":"root")"))).find("role"), std::string::npos);
}

TEST_F(JwtTest, RefusesForgeries) {
  // Signed by a key the JWKS does not hold (same kid).
  EXPECT_NE(Refusal(stranger_.TokenFor(Claims())).find("bad signature"), std::string::npos);
  // A payload changed after signing.
  std::string token = rsa_.TokenFor(Claims());
  const size_t dot1 = token.find('.'), dot2 = token.rfind('.');
  const std::string forged = absl::StrCat(token.substr(0, dot1 + 1),
                                          B64Url(Claims(R"(,"role":"admin")")), token.substr(dot2));
  EXPECT_NE(Refusal(forged).find("bad signature"), std::string::npos);
  // Algorithms a public-key verifier must never take.
  const std::string unsigned_token =
      absl::StrCat(B64Url(R"({"alg":"none"})"), ".", B64Url(Claims()), ".");
  EXPECT_NE(Refusal(unsigned_token).find("algorithm 'none'"), std::string::npos);
  EXPECT_NE(Refusal(rsa_.TokenFor(Claims(), "HS256")).find("HS256"), std::string::npos);
  // An RS256 header on an EC signature, or the other way round.
  EXPECT_FALSE(verifier_->Verify(ec_.TokenFor(Claims(), "RS256"), kNow).ok());
  EXPECT_FALSE(verifier_->Verify(rsa_.TokenFor(Claims(), "ES256"), kNow).ok());
  // Malformed tokens.
  for (const std::string& bad :
       {std::string(""), std::string("a.b"), std::string("a.b.c.d"), std::string("!!.??.**"),
        token + "=", std::string(kMaxJwtBytes + 1, 'a')}) {
    EXPECT_FALSE(verifier_->Verify(bad, kNow).ok()) << bad.substr(0, 40);
  }
}

TEST(JwksTest, RefusesBadKeySets) {
  JwtOptions options;
  options.issuer = "i";
  options.audience = "a";
  TestSigner small = TestSigner::Rsa("small", 1024);
  for (const std::string& jwks :
       {std::string("not json"), std::string(R"({"keys":3})"), std::string(R"({"keys":[]})"),
        std::string(R"({"keys":[{"kty":"oct","k":"eA"}]})"),
        std::string(R"({"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}]})"),
        std::string(R"({"keys":[{"kty":"EC","crv":"P-384","x":"AA","y":"AA"}]})"),
        absl::StrCat(R"({"keys":[)", small.Jwk(), "]}")}) {
    EXPECT_FALSE(JwtVerifier::Create(jwks, options).ok()) << jwks;
  }
  options.audience = "";
  EXPECT_FALSE(JwtVerifier::Create(R"({"keys":[]})", options).ok());
}

}  // namespace
}  // namespace sinkserve::service::security
