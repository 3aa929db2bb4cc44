#include "service/security/api_keys.h"

#include <string>

#include "gtest/gtest.h"

namespace sinkserve::service::security {
namespace {

TEST(ApiKeysTest, HashIsSha256) {
  // FIPS 180-2 test vector.
  EXPECT_EQ(HexOf(HashOf("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(ApiKeysTest, NewKeysAreRandomAndWellFormed) {
  absl::StatusOr<std::string> a = NewApiKey();
  absl::StatusOr<std::string> b = NewApiKey();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(*a, *b);
  EXPECT_EQ(a->size(), 3u + 43u);
  EXPECT_EQ(a->substr(0, 3), "sk_");
}

TEST(ApiKeysTest, FindsTheCallerOfEachKeyAndNothingElse) {
  const std::string text = "# team keys\n" +
                           ApiKeyLine("alpha-key", "sk_alpha", "alpha", Role::kUser) + "\n\n  " +
                           ApiKeyLine("root", "sk_root", "ops", Role::kAdmin) + "   # the admin\n";
  absl::StatusOr<ApiKeyTable> table = ApiKeyTable::Parse(text, "keys");
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_EQ(table->size(), 2u);
  std::optional<Caller> alpha = table->Find("sk_alpha");
  ASSERT_TRUE(alpha.has_value());
  EXPECT_EQ(alpha->tenant, "alpha");
  EXPECT_EQ(alpha->role, Role::kUser);
  EXPECT_EQ(alpha->credential, "alpha-key");
  std::optional<Caller> root = table->Find("sk_root");
  ASSERT_TRUE(root.has_value());
  EXPECT_EQ(root->role, Role::kAdmin);
  EXPECT_FALSE(table->Find("sk_alph").has_value());
  EXPECT_FALSE(table->Find("").has_value());
  // The file holds the hash: the hash itself is no key.
  EXPECT_FALSE(table->Find(HexOf(HashOf("sk_alpha"))).has_value());
}

TEST(ApiKeysTest, RefusesMalformedFilesNamingTheLine) {
  const std::string good = ApiKeyLine("a", "k1", "t", Role::kUser);
  struct Case {
    std::string text;
    std::string message;
  } cases[] = {
      {"a sk_plaintext t user", "line 1: the key must be given as sha256:"},
      {good + "\nb sha256:abcd t user", "line 2: the key must be given as sha256:"},
      {"a sha256:" + std::string(64, 'g') + " t user", "sha256:"},
      {good + " extra", "5 fields"},
      {ApiKeyLine("a", "k1", "Bad Tenant", Role::kUser), "fields"},
      {ApiKeyLine("a", "k1", "BIG", Role::kUser), "tenant name may only hold"},
      {"a sha256:" + HexOf(HashOf("k")) + " t root", "unknown role 'root'"},
      {good + "\n" + ApiKeyLine("a", "k2", "t", Role::kUser), "line 2: repeated name"},
      {good + "\n" + ApiKeyLine("b", "k1", "t", Role::kUser), "listed twice"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<ApiKeyTable> table = ApiKeyTable::Parse(c.text, "keys.txt");
    ASSERT_FALSE(table.ok()) << c.text;
    EXPECT_EQ(table.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(table.status().message().find(c.message), std::string::npos)
        << table.status() << " for " << c.text;
    EXPECT_NE(table.status().message().find("keys.txt"), std::string::npos);
  }
}

TEST(ApiKeysTest, MissingFileIsNotFound) {
  EXPECT_EQ(ApiKeyTable::Load("/nonexistent/keys").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace sinkserve::service::security
