// Client channels of `sinkserve chat` / `bench load` (and the replicas'
// handoff calls): TLS when asked for, and a bearer token on every call.
#ifndef SINKSERVE_SERVICE_SECURITY_CLIENT_CHANNEL_H_
#define SINKSERVE_SERVICE_SECURITY_CLIENT_CHANNEL_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"
#include "service/security/tls.h"

namespace sinkserve::service::security {

// The environment variable clients read a token from when no --token-file
// names one (a token on the command line would show in `ps`).
inline constexpr char kTokenEnv[] = "SINKSERVE_TOKEN";

struct ClientSecurity {
  ClientTlsOptions tls;
  // Sent as `authorization: Bearer <token>` on every call; "" = none.
  std::string token;
};

// The token of `token_file` (its first line, trimmed), else $SINKSERVE_TOKEN,
// else "".
absl::StatusOr<std::string> ReadToken(const std::string& token_file);

// A channel to `address` with `security` and `args`. The token goes in
// through a client interceptor rather than call credentials, so it also
// reaches a server behind a local TLS-terminating proxy over plaintext.
absl::StatusOr<std::shared_ptr<grpc::Channel>> OpenChannel(const std::string& address,
                                                           const ClientSecurity& security,
                                                           grpc::ChannelArguments args = {});

}  // namespace sinkserve::service::security

#endif  // SINKSERVE_SERVICE_SECURITY_CLIENT_CHANNEL_H_
