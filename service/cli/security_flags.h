// Flags of TLS, tokens and tenants: the server's (serve) and its clients'
// (chat, bench load).
#ifndef SINKSERVE_SERVICE_CLI_SECURITY_FLAGS_H_
#define SINKSERVE_SERVICE_CLI_SECURITY_FLAGS_H_

#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "service/cli/flags.h"
#include "service/security/client_channel.h"
#include "service/server/server.h"

namespace sinkserve::cli {

// --tls --tls-ca --tls-cert --tls-key --tls-server-name --token-file.
void AddClientSecurityFlags(std::vector<FlagSpec>* specs);
// TLS is on with --tls or any --tls-* flag; the token comes from
// --token-file, else $SINKSERVE_TOKEN.
absl::StatusOr<service::security::ClientSecurity> ClientSecurityFromFlags(const FlagSet& flags);

// --tls-cert --tls-key --tls-client-ca --tls-reload-seconds --tls-ca --auth
// --api-keys --audit-log --tenant-limits --tenant-max-* --reflection.
void AddServerSecurityFlags(std::vector<FlagSpec>* specs);
absl::Status ServerSecurityFromFlags(const FlagSet& flags, service::ServerOptions* options);

}  // namespace sinkserve::cli

#endif  // SINKSERVE_SERVICE_CLI_SECURITY_FLAGS_H_
