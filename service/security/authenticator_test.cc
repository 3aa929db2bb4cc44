#include "service/security/authenticator.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace sinkserve::service::security {
namespace {

std::string WriteFile(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + "/" + name + std::to_string(::getpid());
  std::ofstream(path) << text;
  return path;
}

TEST(AuthenticatorTest, NoneAdmitsEveryoneAsTheDefaultTenant) {
  absl::StatusOr<std::unique_ptr<Authenticator>> auth = Authenticator::Create(AuthOptions());
  ASSERT_TRUE(auth.ok());
  AuthOutcome outcome = (*auth)->Authenticate(std::nullopt);
  ASSERT_TRUE(outcome.caller.has_value());
  EXPECT_EQ(outcome.caller->tenant, kDefaultTenant);
}

TEST(AuthenticatorTest, ApiKeysAndReload) {
  AuthOptions options;
  options.mode = AuthMode::kApiKeys;
  options.api_keys = WriteFile("keys", ApiKeyLine("one", "sk_one", "t1", Role::kUser) + "\n");
  absl::StatusOr<std::unique_ptr<Authenticator>> auth = Authenticator::Create(options);
  ASSERT_TRUE(auth.ok()) << auth.status();
  EXPECT_EQ((*auth)->Authenticate("Bearer sk_one").caller->tenant, "t1");
  EXPECT_EQ((*auth)->Authenticate(std::nullopt).reason, "no authorization metadata");
  EXPECT_EQ((*auth)->Authenticate("Bearer sk_two").reason, "unknown API key");
  EXPECT_EQ((*auth)->Authenticate("Bearer a.b.c").reason, "a JWT, but --auth does not take JWTs");
  EXPECT_FALSE((*auth)->Authenticate("sk_one").caller.has_value());

  std::ofstream(options.api_keys, std::ios::app)
      << ApiKeyLine("two", "sk_two", "t2", Role::kAdmin) << "\n";
  ASSERT_TRUE((*auth)->Reload().ok());
  EXPECT_EQ((*auth)->Authenticate("Bearer sk_two").caller->role, Role::kAdmin);
  // A broken file: refused, the old keys stay.
  std::ofstream(options.api_keys, std::ios::app) << "garbage\n";
  EXPECT_FALSE((*auth)->Reload().ok());
  EXPECT_TRUE((*auth)->Authenticate("Bearer sk_two").caller.has_value());
  std::remove(options.api_keys.c_str());
}

TEST(AuthenticatorTest, RefusesInconsistentOptions) {
  AuthOptions options;
  options.mode = AuthMode::kApiKeys;
  EXPECT_FALSE(Authenticator::Create(options).ok());  // no key file
  options.mode = AuthMode::kNone;
  options.api_keys = "/tmp/keys";
  EXPECT_FALSE(Authenticator::Create(options).ok());
  options.api_keys.clear();
  options.mode = AuthMode::kJwt;
  EXPECT_FALSE(Authenticator::Create(options).ok());  // no JWKS
  options.jwks = WriteFile("jwks", R"({"keys":[]})");
  options.jwt.issuer = "i";
  options.jwt.audience = "a";
  EXPECT_FALSE(Authenticator::Create(options).ok());  // no usable key
  std::remove(options.jwks.c_str());
}

TEST(AuthenticatorTest, ModeNames) {
  for (AuthMode mode :
       {AuthMode::kNone, AuthMode::kApiKeys, AuthMode::kJwt, AuthMode::kApiKeysAndJwt}) {
    EXPECT_EQ(*ParseAuthMode(AuthModeName(mode)), mode);
  }
  EXPECT_FALSE(ParseAuthMode("basic").ok());
}

}  // namespace
}  // namespace sinkserve::service::security
