#include "service/security/caller.h"

#include "gtest/gtest.h"
#include "memory/session_state.h"

namespace sinkserve::service::security {
namespace {

TEST(CallerTest, DefaultTenantKeepsPlainIds) {
  EXPECT_EQ(ScopedId(kDefaultTenant, "chat-1"), "chat-1");
  TenantAndId split = SplitScopedId("chat-1");
  EXPECT_EQ(split.tenant, kDefaultTenant);
  EXPECT_EQ(split.id, "chat-1");
}

TEST(CallerTest, OtherTenantsGetDisjointValidIds) {
  const std::string a = ScopedId("alpha", "chat:1");
  const std::string b = ScopedId("beta", "chat:1");
  EXPECT_NE(a, b);
  EXPECT_NE(a, "chat:1");
  EXPECT_TRUE(memory::ValidateSessionId(a).ok());
  TenantAndId split = SplitScopedId(a);
  EXPECT_EQ(split.tenant, "alpha");
  EXPECT_EQ(split.id, "chat:1");
  // No plain id a client may send is another tenant's scoped id.
  EXPECT_FALSE(memory::ValidateSessionId(std::string("alpha") + memory::kTenantSeparator).ok());
  EXPECT_FALSE(
      memory::ValidateSessionId(std::string("Alpha") + memory::kTenantSeparator + "x").ok());
  EXPECT_FALSE(memory::ValidateSessionId(std::string("a") + memory::kTenantSeparator + "x" +
                                         memory::kTenantSeparator + "y")
                   .ok());
}

TEST(CallerTest, UnscopedRewritesMessages) {
  const std::string scoped = ScopedId("alpha", "s1");
  absl::Status s =
      Unscoped(absl::NotFoundError("no session " + scoped + " in store"), scoped, "s1");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "no session s1 in store");
  EXPECT_TRUE(Unscoped(absl::OkStatus(), scoped, "s1").ok());
}

TEST(CallerTest, Roles) {
  EXPECT_EQ(*ParseRole("admin"), Role::kAdmin);
  EXPECT_EQ(*ParseRole("user"), Role::kUser);
  EXPECT_FALSE(ParseRole("root").ok());
}

}  // namespace
}  // namespace sinkserve::service::security
