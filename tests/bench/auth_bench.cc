// What authentication costs a call: the Authenticator on an `authorization`
// value, for API key files of 10 and 1,000 keys (every entry is compared, in
// constant time) and for ES256 / RS256 JWTs. It runs once per RPC (once per
// Chat stream, not per turn); BENCHMARKS.md sets it against turn latency.
//
//   build/tests/auth_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "benchmark/benchmark.h"
#include "service/security/api_keys.h"
#include "service/security/authenticator.h"

namespace sinkserve::service::security {
namespace {

std::string B64(const std::string& bytes) {
  std::string out;
  absl::WebSafeBase64Escape(bytes, &out);
  return out;
}

std::string Param(EVP_PKEY* key, const char* name, int pad) {
  BIGNUM* bn = nullptr;
  EVP_PKEY_get_bn_param(key, name, &bn);
  std::string out(pad > 0 ? pad : BN_num_bytes(bn), '\0');
  BN_bn2binpad(bn, reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(out.size()));
  BN_free(bn);
  return out;
}

std::string Sign(EVP_PKEY* key, bool ec, const std::string& input) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> md(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  size_t len = 0;
  EVP_DigestSignInit(md.get(), nullptr, EVP_sha256(), nullptr, key);
  EVP_DigestSign(md.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(input.data()),
                 input.size());
  std::string sig(len, '\0');
  EVP_DigestSign(md.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                 reinterpret_cast<const unsigned char*>(input.data()), input.size());
  sig.resize(len);
  if (!ec) return sig;
  const unsigned char* p = reinterpret_cast<const unsigned char*>(sig.data());
  ECDSA_SIG* es = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(len));
  std::string raw(64, '\0');
  BN_bn2binpad(ECDSA_SIG_get0_r(es), reinterpret_cast<unsigned char*>(raw.data()), 32);
  BN_bn2binpad(ECDSA_SIG_get0_s(es), reinterpret_cast<unsigned char*>(raw.data()) + 32, 32);
  ECDSA_SIG_free(es);
  return raw;
}

std::string TempPath(const std::string& name) {
  return absl::StrCat("/tmp/auth_bench_", ::getpid(), "_", name);
}

std::unique_ptr<Authenticator> WithKeys(int n) {
  AuthOptions options;
  options.mode = AuthMode::kApiKeys;
  options.api_keys = TempPath(absl::StrCat("keys", n));
  std::ofstream out(options.api_keys);
  for (int i = 0; i < n; ++i) {
    out << ApiKeyLine(absl::StrCat("k", i), absl::StrCat("sk_key_", i), "t", Role::kUser) << "\n";
  }
  out.close();
  auto auth = *Authenticator::Create(options);
  std::remove(options.api_keys.c_str());
  return auth;
}

void BM_ApiKey(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  std::unique_ptr<Authenticator> auth = WithKeys(n);
  const std::string value = absl::StrCat("Bearer sk_key_", n / 2);
  for (auto _ : state) {
    AuthOutcome outcome = auth->Authenticate(value);
    benchmark::DoNotOptimize(outcome);
    if (!outcome.caller.has_value()) state.SkipWithError("refused");
  }
}
BENCHMARK(BM_ApiKey)->Arg(10)->Arg(1000);

void BM_Jwt(benchmark::State& state) {
  const bool ec = state.range(0) == 0;
  EVP_PKEY* key = ec ? EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256")
                     : EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048});
  const std::string jwk =
      ec ? absl::StrCat(R"({"kty":"EC","crv":"P-256","kid":"k","x":")",
                        B64(Param(key, OSSL_PKEY_PARAM_EC_PUB_X, 32)), R"(","y":")",
                        B64(Param(key, OSSL_PKEY_PARAM_EC_PUB_Y, 32)), R"("})")
         : absl::StrCat(R"({"kty":"RSA","kid":"k","n":")",
                        B64(Param(key, OSSL_PKEY_PARAM_RSA_N, 0)), R"(","e":")",
                        B64(Param(key, OSSL_PKEY_PARAM_RSA_E, 0)), R"("})");
  AuthOptions options;
  options.mode = AuthMode::kJwt;
  options.jwks = TempPath("jwks");
  options.jwt.issuer = "https://idp";
  options.jwt.audience = "sinkserve";
  std::ofstream(options.jwks) << R"({"keys":[)" << jwk << "]}";
  std::unique_ptr<Authenticator> auth = *Authenticator::Create(options);
  std::remove(options.jwks.c_str());
  const std::string input = absl::StrCat(
      B64(absl::StrCat(R"({"alg":")", ec ? "ES256" : "RS256", R"(","kid":"k"})")), ".",
      B64(absl::StrCat(R"({"iss":"https://idp","aud":"sinkserve","tenant":"acme","sub":"s",)",
                       R"("exp":)", absl::ToUnixSeconds(absl::Now()) + 3600, "}")));
  const std::string value = absl::StrCat("Bearer ", input, ".", B64(Sign(key, ec, input)));
  for (auto _ : state) {
    AuthOutcome outcome = auth->Authenticate(value);
    benchmark::DoNotOptimize(outcome);
    if (!outcome.caller.has_value()) state.SkipWithError(outcome.reason.c_str());
  }
  EVP_PKEY_free(key);
  state.SetLabel(ec ? "ES256" : "RS256");
}
BENCHMARK(BM_Jwt)->Arg(0)->Arg(1);

}  // namespace
}  // namespace sinkserve::service::security

BENCHMARK_MAIN();
