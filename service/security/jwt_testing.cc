#include "service/security/jwt_testing.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>

#include <memory>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace sinkserve::service::security::jwt_testing {
namespace {

// A BIGNUM parameter of `key`, big-endian, left-padded to `pad` bytes (0:
// its own length).
std::string Param(EVP_PKEY* key, const char* name, int pad) {
  BIGNUM* bn = nullptr;
  EVP_PKEY_get_bn_param(key, name, &bn);
  std::string out(pad > 0 ? pad : BN_num_bytes(bn), '\0');
  BN_bn2binpad(bn, reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(out.size()));
  BN_free(bn);
  return out;
}

}  // namespace

std::string B64Url(std::string_view bytes) {
  std::string out;
  absl::WebSafeBase64Escape(absl::string_view(bytes.data(), bytes.size()), &out);
  return out;
}

TestSigner TestSigner::Ec(std::string kid) {
  return TestSigner(std::move(kid), true, EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
}

TestSigner TestSigner::Rsa(std::string kid, int rsa_bits) {
  return TestSigner(std::move(kid), false,
                    EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<size_t>(rsa_bits)));
}

TestSigner::TestSigner(TestSigner&& other) noexcept
    : kid_(std::move(other.kid_)), ec_(other.ec_), key_(other.key_) {
  other.key_ = nullptr;
}

TestSigner::~TestSigner() { EVP_PKEY_free(key_); }

std::string TestSigner::Jwk() const {
  if (ec_) {
    return absl::StrCat(R"({"kty":"EC","crv":"P-256","use":"sig","kid":")", kid_, R"(","x":")",
                        B64Url(Param(key_, OSSL_PKEY_PARAM_EC_PUB_X, 32)), R"(","y":")",
                        B64Url(Param(key_, OSSL_PKEY_PARAM_EC_PUB_Y, 32)), R"("})");
  }
  return absl::StrCat(R"({"kty":"RSA","alg":"RS256","kid":")", kid_, R"(","n":")",
                      B64Url(Param(key_, OSSL_PKEY_PARAM_RSA_N, 0)), R"(","e":")",
                      B64Url(Param(key_, OSSL_PKEY_PARAM_RSA_E, 0)), R"("})");
}

std::string TestSigner::Sign(std::string_view input) const {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> md(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  size_t len = 0;
  const auto* data = reinterpret_cast<const unsigned char*>(input.data());
  EVP_DigestSignInit(md.get(), nullptr, EVP_sha256(), nullptr, key_);
  EVP_DigestSign(md.get(), nullptr, &len, data, input.size());
  std::string sig(len, '\0');
  EVP_DigestSign(md.get(), reinterpret_cast<unsigned char*>(sig.data()), &len, data, input.size());
  sig.resize(len);
  if (!ec_) return sig;
  // OpenSSL writes DER; JWS wants r || s.
  const unsigned char* p = reinterpret_cast<const unsigned char*>(sig.data());
  ECDSA_SIG* es = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(sig.size()));
  std::string raw(64, '\0');
  BN_bn2binpad(ECDSA_SIG_get0_r(es), reinterpret_cast<unsigned char*>(raw.data()), 32);
  BN_bn2binpad(ECDSA_SIG_get0_s(es), reinterpret_cast<unsigned char*>(raw.data()) + 32, 32);
  ECDSA_SIG_free(es);
  return raw;
}

std::string TestSigner::Token(std::string_view header_json, std::string_view claims_json) const {
  const std::string input = absl::StrCat(B64Url(header_json), ".", B64Url(claims_json));
  return absl::StrCat(input, ".", B64Url(Sign(input)));
}

std::string TestSigner::TokenFor(std::string_view claims_json, std::string_view alg) const {
  const std::string header = absl::StrCat(
      R"({"alg":")",
      alg.empty() ? absl::string_view(this->alg()) : absl::string_view(alg.data(), alg.size()),
      R"(","typ":"JWT","kid":")", kid_, R"("})");
  return Token(header, claims_json);
}

}  // namespace sinkserve::service::security::jwt_testing
