// `sinkserve keys new`: makes an API key and the line of the server's key
// file that admits it. Only the key's hash goes in that file.
#include <fcntl.h>
#include <unistd.h>

#include <iostream>
#include <string>
#include <vector>

#include "memory/session_state.h"
#include "service/cli/commands.h"
#include "service/security/api_keys.h"

namespace sinkserve::cli {
namespace {

constexpr char kSynopsis[] =
    "new --name NAME --tenant TENANT [--role user|admin] [--append KEYFILE]\n"
    "Prints a new random API key on stdout and appends the line that admits it\n"
    "(its SHA-256, never the key) to KEYFILE, the server's --api-keys file (or\n"
    "prints that line on stderr). Give the key to the client (sinkserve chat\n"
    "--token-file, or $SINKSERVE_TOKEN) and send the server SIGHUP.";

}  // namespace

int RunKeys(const std::vector<std::string>& args) {
  FlagSet flags("keys", kSynopsis,
                {{"name", FlagKind::kString, "", "the key's name in logs and the audit log"},
                 {"tenant", FlagKind::kString, "", "the tenant whose sessions it reaches"},
                 {"role", FlagKind::kString, "user", "user or admin"},
                 {"append", FlagKind::kString, "",
                  "append the key's line to this key file (created 0600 if missing)"}});
  if (args.empty() || args[0] != "new") {
    std::cerr << flags.Usage();
    return args.size() == 1 && (args[0] == "--help" || args[0] == "-h") ? kExitOk : kExitUsage;
  }
  if (int rc = ParseOrExit(flags, {args.begin() + 1, args.end()}); rc >= 0) return rc;
  const std::string name = flags.GetString("name");
  if (name.empty() || name.size() > 128 || name.find_first_of(" \t#") != std::string::npos) {
    std::cerr << "sinkserve keys: --name must be 1 to 128 bytes without spaces or '#'\n";
    return kExitUsage;
  }
  if (absl::Status s = memory::ValidateTenantName(flags.GetString("tenant")); !s.ok()) {
    std::cerr << "sinkserve keys: --tenant: " << s.message() << "\n";
    return kExitUsage;
  }
  absl::StatusOr<service::security::Role> role =
      service::security::ParseRole(flags.GetString("role"));
  if (!role.ok()) return Fail("keys", role.status());
  absl::StatusOr<std::string> key = service::security::NewApiKey();
  if (!key.ok()) return Fail("keys", key.status());
  const std::string line =
      service::security::ApiKeyLine(name, *key, flags.GetString("tenant"), *role);
  if (const std::string path = flags.GetString("append"); !path.empty()) {
    // Not world-readable: the hashes are no secret, but who holds keys is.
    const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT, 0600);
    const std::string text = line + "\n";
    if (fd < 0 || ::write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
      if (fd >= 0) ::close(fd);
      return Fail("keys", absl::PermissionDeniedError("cannot append to " + path));
    }
    ::close(fd);
    std::cerr << "appended " << name << " (tenant " << flags.GetString("tenant") << ") to " << path
              << "; send the server SIGHUP to load it\n";
  } else {
    std::cerr << "add this line to the server's --api-keys file, then send it SIGHUP:\n"
              << line << "\n";
  }
  std::cout << *key << "\n";
  return kExitOk;
}

}  // namespace sinkserve::cli
