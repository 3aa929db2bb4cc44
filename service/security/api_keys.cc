#include "service/security/api_keys.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "memory/session_state.h"

namespace sinkserve::service::security {
namespace {

constexpr absl::string_view kHashPrefix = "sha256:";

std::string_view Std(absl::string_view v) { return std::string_view(v.data(), v.size()); }

bool ParseHex(std::string_view hex, Sha256* out) {
  if (hex.size() != 64) return false;
  for (size_t i = 0; i < 32; ++i) {
    int v = 0;
    for (int k = 0; k < 2; ++k) {
      const char c = absl::ascii_tolower(static_cast<unsigned char>(hex[2 * i + k]));
      int nibble;
      if (c >= '0' && c <= '9') {
        nibble = c - '0';
      } else if (c >= 'a' && c <= 'f') {
        nibble = c - 'a' + 10;
      } else {
        return false;
      }
      v = v * 16 + nibble;
    }
    (*out)[i] = static_cast<uint8_t>(v);
  }
  return true;
}

}  // namespace

Sha256 HashOf(std::string_view data) {
  Sha256 digest;
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), digest.data());
  return digest;
}

std::string HexOf(const Sha256& digest) {
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest.data()), digest.size()));
}

absl::StatusOr<std::string> NewApiKey() {
  unsigned char bytes[32];
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) {
    return absl::InternalError("OpenSSL RAND_bytes failed: no key made");
  }
  std::string encoded;
  absl::WebSafeBase64Escape(absl::string_view(reinterpret_cast<const char*>(bytes), sizeof(bytes)),
                            &encoded);
  return absl::StrCat("sk_", encoded);
}

std::string ApiKeyLine(std::string_view name, std::string_view key, std::string_view tenant,
                       Role role) {
  return absl::StrCat(absl::string_view(name.data(), name.size()), " ", kHashPrefix,
                      HexOf(HashOf(key)), " ", absl::string_view(tenant.data(), tenant.size()), " ",
                      RoleName(role));
}

absl::StatusOr<ApiKeyTable> ApiKeyTable::Parse(std::string_view text, std::string_view source) {
  ApiKeyTable table;
  std::set<std::string> names;
  std::set<Sha256> hashes;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(absl::string_view(text.data(), text.size()), '\n')) {
    ++line_number;
    if (const size_t hash = line.find('#'); hash != absl::string_view::npos) {
      line = line.substr(0, hash);
    }
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (fields.empty()) continue;
    auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(
          absl::StrCat("API key file ", absl::string_view(source.data(), source.size()), " line ",
                       line_number, ": ", why, " (expected NAME sha256:HEX64 TENANT user|admin)"));
    };
    if (fields.size() != 4) return bad(absl::StrCat(fields.size(), " fields"));
    Entry entry;
    if (fields[0].size() > 128) return bad("name longer than 128 bytes");
    entry.caller.credential = std::string(fields[0]);
    entry.caller.api_key = true;
    if (!absl::StartsWith(fields[1], kHashPrefix) ||
        !ParseHex(Std(fields[1].substr(kHashPrefix.size())), &entry.hash)) {
      return bad("the key must be given as sha256: and 64 hex digits (never the key itself)");
    }
    if (absl::Status s = memory::ValidateTenantName(Std(fields[2])); !s.ok())
      return bad(s.message());
    absl::StatusOr<Role> role = ParseRole(Std(fields[3]));
    if (!role.ok()) return bad(role.status().message());
    entry.caller.tenant = std::string(fields[2]);
    entry.caller.role = *role;
    if (!names.insert(entry.caller.credential).second) return bad("repeated name");
    if (!hashes.insert(entry.hash).second) return bad("the same key is listed twice");
    table.entries_.push_back(std::move(entry));
  }
  return table;
}

absl::StatusOr<ApiKeyTable> ApiKeyTable::Load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read API key file ", path));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading API key file ", path));
  return Parse(text.str(), path);
}

bool ApiKeyTable::Admits(const Caller& caller) const {
  for (const Entry& entry : entries_) {
    if (entry.caller.credential == caller.credential && entry.caller.tenant == caller.tenant &&
        entry.caller.role == caller.role) {
      return true;
    }
  }
  return false;
}

std::optional<Caller> ApiKeyTable::Find(std::string_view key) const {
  const Sha256 hash = HashOf(key);
  const Entry* found = nullptr;
  // Every entry is compared, with no early exit: how long a refusal takes
  // says nothing about how close a guess came.
  for (const Entry& entry : entries_) {
    const bool equal = CRYPTO_memcmp(entry.hash.data(), hash.data(), hash.size()) == 0;
    found = equal ? &entry : found;
  }
  if (found == nullptr) return std::nullopt;
  return found->caller;
}

}  // namespace sinkserve::service::security
