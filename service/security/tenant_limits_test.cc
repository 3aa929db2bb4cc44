#include "service/security/tenant_limits.h"

#include <string>

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace sinkserve::service::security {
namespace {

TEST(TenantLimitsTest, ParsesOverridesOverDefaults) {
  TenantLimits defaults{100, 10, 5000};
  auto parsed = ParseTenantLimits(
      "# big customer\nacme sessions=0 tokens_per_minute=90000\n\nsmall streams=1 # one at a "
      "time\n",
      "limits", defaults);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_EQ(parsed->size(), 2u);
  EXPECT_EQ(parsed->at("acme").sessions, 0);
  EXPECT_EQ(parsed->at("acme").streams, 10);
  EXPECT_EQ(parsed->at("acme").tokens_per_minute, 90000);
  EXPECT_EQ(parsed->at("small").streams, 1);
  EXPECT_EQ(parsed->at("small").sessions, 100);
}

TEST(TenantLimitsTest, RefusesBadLines) {
  for (const char* text : {"Acme sessions=1", "acme sessions", "acme sessions=-1",
                           "acme sessions=x", "acme turns=3", "acme\nacme streams=1"}) {
    auto parsed = ParseTenantLimits(text, "limits", TenantLimits{});
    EXPECT_FALSE(parsed.ok()) << text;
    if (!parsed.ok()) {
      EXPECT_NE(parsed.status().message().find("limits line"), std::string::npos);
    }
  }
}

TEST(TenantQuotasTest, StreamsAreCountedPerTenant) {
  TenantQuotas quotas(TenantLimits{0, 2, 0}, {{"one", TenantLimits{0, 1, 0}}});
  EXPECT_TRUE(quotas.AcquireStream("a").ok());
  EXPECT_TRUE(quotas.AcquireStream("a").ok());
  absl::Status third = quotas.AcquireStream("a");
  EXPECT_EQ(third.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(third.message().find("retry"), std::string::npos);
  EXPECT_TRUE(quotas.AcquireStream("b").ok());  // other tenants are not affected
  EXPECT_TRUE(quotas.AcquireStream("one").ok());
  EXPECT_FALSE(quotas.AcquireStream("one").ok());
  quotas.ReleaseStream("a");
  EXPECT_TRUE(quotas.AcquireStream("a").ok());
  // New limits apply at once, counts stay.
  quotas.SetOverrides({{"a", TenantLimits{0, 3, 0}}});
  EXPECT_TRUE(quotas.AcquireStream("a").ok());
  EXPECT_FALSE(quotas.AcquireStream("a").ok());
}

TEST(TenantQuotasTest, TokensPerMinuteSlide) {
  TenantQuotas quotas(TenantLimits{0, 0, 100}, {});
  const absl::Time t0 = absl::FromUnixSeconds(1'000'000);
  EXPECT_TRUE(quotas.AdmitTurn("a", t0).ok());
  quotas.AddTokens("a", 60, t0);
  quotas.AddTokens("a", 30, t0 + absl::Seconds(20));
  EXPECT_TRUE(quotas.AdmitTurn("a", t0 + absl::Seconds(30)).ok());  // 90 < 100
  quotas.AddTokens("a", 20, t0 + absl::Seconds(30));
  absl::Status over = quotas.AdmitTurn("a", t0 + absl::Seconds(40));  // 110
  EXPECT_EQ(over.code(), absl::StatusCode::kResourceExhausted);
  // The 60 of t0 leave the window at t0 + 60 s: 20 s after t0 + 40 s.
  EXPECT_NE(over.message().find("retry in 20 s"), std::string::npos) << over;
  EXPECT_TRUE(quotas.AdmitTurn("b", t0 + absl::Seconds(40)).ok());
  EXPECT_FALSE(quotas.AdmitTurn("a", t0 + absl::Seconds(59)).ok());
  EXPECT_TRUE(quotas.AdmitTurn("a", t0 + absl::Seconds(60)).ok());  // 50 left
  // After a quiet minute and more, the ring holds nothing stale.
  EXPECT_TRUE(quotas.AdmitTurn("a", t0 + absl::Seconds(3600)).ok());
}

}  // namespace
}  // namespace sinkserve::service::security
