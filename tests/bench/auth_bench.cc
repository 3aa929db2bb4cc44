// What authentication costs a call: the Authenticator on an `authorization`
// value, for API key files of 10 and 1,000 keys (every entry is compared, in
// constant time) and for ES256 / RS256 JWTs. It runs once per RPC (once per
// Chat stream, not per turn); BENCHMARKS.md sets it against turn latency.
//
//   build/tests/auth_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <unistd.h>

#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "benchmark/benchmark.h"
#include "service/security/api_keys.h"
#include "service/security/authenticator.h"
#include "service/security/jwt_testing.h"

namespace sinkserve::service::security {
namespace {

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
  const jwt_testing::TestSigner key =
      ec ? jwt_testing::TestSigner::Ec("k") : jwt_testing::TestSigner::Rsa("k");
  AuthOptions options;
  options.mode = AuthMode::kJwt;
  options.jwks = TempPath("jwks");
  options.jwt.issuer = "https://idp";
  options.jwt.audience = "sinkserve";
  std::ofstream(options.jwks) << R"({"keys":[)" << key.Jwk() << "]}";
  std::unique_ptr<Authenticator> auth = *Authenticator::Create(options);
  std::remove(options.jwks.c_str());
  const std::string value = absl::StrCat(
      "Bearer ", key.TokenFor(absl::StrCat(
                     R"({"iss":"https://idp","aud":"sinkserve","tenant":"acme","sub":"s","exp":)",
                     absl::ToUnixSeconds(absl::Now()) + 3600, "}")));
  for (auto _ : state) {
    AuthOutcome outcome = auth->Authenticate(value);
    benchmark::DoNotOptimize(outcome);
    if (!outcome.caller.has_value()) state.SkipWithError(outcome.reason.c_str());
  }
  state.SetLabel(ec ? "ES256" : "RS256");
}
BENCHMARK(BM_Jwt)->Arg(0)->Arg(1);

}  // namespace
}  // namespace sinkserve::service::security

BENCHMARK_MAIN();
