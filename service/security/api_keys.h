// API keys: a file maps the SHA-256 of each key (never the key itself) to a
// name, a tenant and a role. A presented key is hashed and compared with
// every entry in constant time, so neither the file nor the timing of a
// refusal tells an attacker anything about valid keys.
//
// File format, one key per line ('#' starts a comment):
//   NAME  sha256:HEX64  TENANT  ROLE
// e.g. `billing-prod sha256:9f86d08... billing user`. `sinkserve keys new`
// makes a key and prints its line.
#ifndef SINKSERVE_SERVICE_SECURITY_API_KEYS_H_
#define SINKSERVE_SERVICE_SECURITY_API_KEYS_H_

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "service/security/caller.h"

namespace sinkserve::service::security {

using Sha256 = std::array<uint8_t, 32>;

Sha256 HashOf(std::string_view data);
std::string HexOf(const Sha256& digest);

// A new random key: "sk_" and 43 base64url characters (256 bits).
absl::StatusOr<std::string> NewApiKey();

// The key file line of `key` (NAME sha256:HEX TENANT ROLE).
std::string ApiKeyLine(std::string_view name, std::string_view key, std::string_view tenant,
                       Role role);

class ApiKeyTable {
 public:
  // Parses a key file's text; `source` names it in errors (which give the
  // line). INVALID_ARGUMENT for a malformed line or a repeated name or hash.
  static absl::StatusOr<ApiKeyTable> Parse(std::string_view text, std::string_view source);
  static absl::StatusOr<ApiKeyTable> Load(const std::string& path);

  // The caller of `key`, if it is one of the table's. Constant time in the
  // key's content (it depends only on the table's size).
  std::optional<Caller> Find(std::string_view key) const;

  // Whether the table still admits `caller` (a caller an earlier table
  // found): a key of that name, tenant and role. False after revocation.
  bool Admits(const Caller& caller) const;

  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    Sha256 hash;
    Caller caller;
  };
  std::vector<Entry> entries_;
};

}  // namespace sinkserve::service::security

#endif  // SINKSERVE_SERVICE_SECURITY_API_KEYS_H_
