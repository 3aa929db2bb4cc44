#include "service/security/bearer.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace sinkserve::service::security {
namespace {

TEST(BearerTest, TakesTheToken) {
  EXPECT_EQ(*ParseBearer("Bearer sk_abc-DEF.1~+/=="), "sk_abc-DEF.1~+/==");
  EXPECT_EQ(*ParseBearer("bearer   tok"), "tok");
  EXPECT_EQ(*ParseBearer("BEARER a.b.c"), "a.b.c");
}

TEST(BearerTest, RefusesEverythingElse) {
  const std::string too_long = "Bearer " + std::string(kMaxAuthorizationBytes, 'a');
  for (const std::string& value : std::vector<std::string>{
           "", "Bearer", "Bearer ", "Bearer    ", "Basic dXNlcjpwYXNz", "Bearertok", "Bearer\ttok",
           "Bearer tok en", "Bearer tok\n", "Bearer =abc", "Bearer ab=c", "Bearer tök",
           std::string("Bearer a\0b", 10), too_long}) {
    absl::StatusOr<std::string_view> token = ParseBearer(value);
    EXPECT_FALSE(token.ok()) << "'" << value << "' gave " << *token;
    if (!token.ok()) {
      EXPECT_EQ(token.status().code(), absl::StatusCode::kUnauthenticated);
    }
  }
}

}  // namespace
}  // namespace sinkserve::service::security
