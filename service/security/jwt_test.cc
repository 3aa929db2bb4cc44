#include "service/security/jwt.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>

#include <memory>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace sinkserve::service::security {
namespace {

const absl::Time kNow = absl::FromUnixSeconds(1'800'000'000);

std::string B64(const std::string& bytes) {
  std::string out;
  absl::WebSafeBase64Escape(bytes, &out);
  return out;
}

std::string BnBytes(EVP_PKEY* key, const char* name, int pad = 0) {
  BIGNUM* bn = nullptr;
  EXPECT_EQ(EVP_PKEY_get_bn_param(key, name, &bn), 1);
  std::string out(pad > 0 ? pad : BN_num_bytes(bn), '\0');
  BN_bn2binpad(bn, reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(out.size()));
  BN_free(bn);
  return out;
}

// A key pair of the test's issuer, its JWK and a signer.
struct TestKey {
  std::string kid;
  bool ec;
  EVP_PKEY* pkey;

  TestKey(std::string kid_in, bool ec_in, int rsa_bits = 2048)
      : kid(std::move(kid_in)),
        ec(ec_in),
        pkey(ec ? EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256")
                : EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<size_t>(rsa_bits))) {}
  ~TestKey() { EVP_PKEY_free(pkey); }

  std::string Jwk() const {
    if (ec) {
      return absl::StrCat(R"({"kty":"EC","crv":"P-256","use":"sig","kid":")", kid, R"(","x":")",
                          B64(BnBytes(pkey, OSSL_PKEY_PARAM_EC_PUB_X, 32)), R"(","y":")",
                          B64(BnBytes(pkey, OSSL_PKEY_PARAM_EC_PUB_Y, 32)), R"("})");
    }
    return absl::StrCat(R"({"kty":"RSA","alg":"RS256","kid":")", kid, R"(","n":")",
                        B64(BnBytes(pkey, OSSL_PKEY_PARAM_RSA_N)), R"(","e":")",
                        B64(BnBytes(pkey, OSSL_PKEY_PARAM_RSA_E)), R"("})");
  }

  std::string Sign(const std::string& input) const {
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> md(EVP_MD_CTX_new(), EVP_MD_CTX_free);
    size_t len = 0;
    EXPECT_EQ(EVP_DigestSignInit(md.get(), nullptr, EVP_sha256(), nullptr, pkey), 1);
    EXPECT_EQ(EVP_DigestSign(md.get(), nullptr, &len,
                             reinterpret_cast<const unsigned char*>(input.data()), input.size()),
              1);
    std::string sig(len, '\0');
    EXPECT_EQ(EVP_DigestSign(md.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                             reinterpret_cast<const unsigned char*>(input.data()), input.size()),
              1);
    sig.resize(len);
    if (!ec) return sig;
    // DER -> r || s, as JWS wants it.
    const unsigned char* p = reinterpret_cast<const unsigned char*>(sig.data());
    ECDSA_SIG* es = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(sig.size()));
    std::string raw(64, '\0');
    BN_bn2binpad(ECDSA_SIG_get0_r(es), reinterpret_cast<unsigned char*>(raw.data()), 32);
    BN_bn2binpad(ECDSA_SIG_get0_s(es), reinterpret_cast<unsigned char*>(raw.data()) + 32, 32);
    ECDSA_SIG_free(es);
    return raw;
  }

  std::string Token(const std::string& claims, std::string alg = "") const {
    if (alg.empty()) alg = ec ? "ES256" : "RS256";
    const std::string input = absl::StrCat(
        B64(absl::StrCat(R"({"alg":")", alg, R"(","typ":"JWT","kid":")", kid, R"("})")), ".",
        B64(claims));
    return absl::StrCat(input, ".", B64(Sign(input)));
  }
};

std::string Claims(const std::string& extra = "", int64_t exp_offset = 600) {
  return absl::StrCat(R"({"iss":"https://auth.example","aud":"sinkserve","sub":"svc-7",)",
                      R"("tenant":"acme","exp":)", absl::ToUnixSeconds(kNow) + exp_offset, extra,
                      "}");
}

class JwtTest : public ::testing::Test {
 protected:
  JwtTest() : rsa_("rsa-1", false), ec_("ec-1", true), stranger_("rsa-1", false) {
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

  TestKey rsa_, ec_, stranger_;
  std::unique_ptr<JwtVerifier> verifier_;
};

TEST_F(JwtTest, AcceptsRs256AndEs256) {
  EXPECT_EQ(verifier_->keys(), 2u);  // the symmetric key is skipped
  for (const TestKey* key : {&rsa_, &ec_}) {
    absl::StatusOr<Caller> caller = verifier_->Verify(key->Token(Claims()), kNow);
    ASSERT_TRUE(caller.ok()) << caller.status();
    EXPECT_EQ(caller->tenant, "acme");
    EXPECT_EQ(caller->role, Role::kUser);
    EXPECT_EQ(caller->credential, "jwt:svc-7");
  }
  absl::StatusOr<Caller> admin =
      verifier_->Verify(rsa_.Token(Claims(R"(,"role":"admin","nbf":1799999990)")), kNow);
  ASSERT_TRUE(admin.ok()) << admin.status();
  EXPECT_EQ(admin->role, Role::kAdmin);
  // aud may be an array.
  std::string claims = Claims();
  claims.replace(claims.find(R"("sinkserve")"), 11, R"(["other","sinkserve"])");
  EXPECT_TRUE(verifier_->Verify(ec_.Token(claims), kNow).ok());
}

TEST_F(JwtTest, TimeClaims) {
  EXPECT_NE(Refusal(rsa_.Token(Claims("", -31))).find("expired"), std::string::npos);
  EXPECT_TRUE(verifier_->Verify(rsa_.Token(Claims("", -29)), kNow).ok());  // leeway
  EXPECT_NE(Refusal(rsa_.Token(Claims(R"(,"nbf":1800000100)"))).find("nbf"), std::string::npos);
  // Found by credentials_fuzz: a date past int64 seconds.
  EXPECT_NE(Refusal(rsa_.Token(R"({"iss":"https://auth.example","aud":"sinkserve",)"
                               R"("tenant":"acme","exp":1e87})"))
                .find("exp"),
            std::string::npos);
  EXPECT_NE(Refusal(rsa_.Token(R"({"iss":"https://auth.example","aud":"sinkserve",)"
                               R"("tenant":"acme"})"))
                .find("exp"),
            std::string::npos);
}

TEST_F(JwtTest, WhoIssuedItAndForWhom) {
  std::string claims = Claims();
  std::string wrong_aud = claims, wrong_iss = claims;
  wrong_aud.replace(wrong_aud.find(R"("sinkserve")"), 11, R"("billing")");
  wrong_iss.replace(wrong_iss.find("auth.example"), 12, "evil.example");
  EXPECT_NE(Refusal(rsa_.Token(wrong_aud)).find("audience"), std::string::npos);
  EXPECT_NE(Refusal(rsa_.Token(wrong_iss)).find("issuer"), std::string::npos);
  std::string no_tenant = claims, bad_tenant = claims;
  no_tenant.replace(no_tenant.find(R"("tenant")"), 8, R"("tenantx")");
  bad_tenant.replace(bad_tenant.find(R"("acme")"), 6, R"("Ac me")");
  EXPECT_NE(Refusal(rsa_.Token(no_tenant)).find("tenant"), std::string::npos);
  EXPECT_NE(Refusal(rsa_.Token(bad_tenant)).find("tenant"), std::string::npos);
  EXPECT_NE(Refusal(rsa_.Token(Claims(R"(,"role":"root")"))).find("role"), std::string::npos);
}

TEST_F(JwtTest, RefusesForgeries) {
  // Signed by a key the JWKS does not hold (same kid).
  EXPECT_NE(Refusal(stranger_.Token(Claims())).find("bad signature"), std::string::npos);
  // A payload changed after signing.
  std::string token = rsa_.Token(Claims());
  const size_t dot1 = token.find('.'), dot2 = token.rfind('.');
  const std::string forged = absl::StrCat(token.substr(0, dot1 + 1),
                                          B64(Claims(R"(,"role":"admin")")), token.substr(dot2));
  EXPECT_NE(Refusal(forged).find("bad signature"), std::string::npos);
  // Algorithms a public-key verifier must never take.
  const std::string unsigned_token =
      absl::StrCat(B64(R"({"alg":"none"})"), ".", B64(Claims()), ".");
  EXPECT_NE(Refusal(unsigned_token).find("algorithm 'none'"), std::string::npos);
  EXPECT_NE(Refusal(rsa_.Token(Claims(), "HS256")).find("HS256"), std::string::npos);
  // An RS256 header on an EC signature, or the other way round.
  EXPECT_FALSE(verifier_->Verify(ec_.Token(Claims(), "RS256"), kNow).ok());
  EXPECT_FALSE(verifier_->Verify(rsa_.Token(Claims(), "ES256"), kNow).ok());
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
  TestKey small("small", false, 1024);
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
