// TLS for the gRPC listener and its clients, on gRPC's own TLS stack.
//
// The server's certificate, key and client CA are watched files: gRPC re-reads
// them every `reload_seconds`, so a rotation (replace the files, atomically:
// see RUNBOOK.md) takes effect without a restart and without touching open
// connections.
#ifndef SINKSERVE_SERVICE_SECURITY_TLS_H_
#define SINKSERVE_SERVICE_SECURITY_TLS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"

namespace sinkserve::service::security {

struct ServerTlsOptions {
  // PEM certificate chain and private key; both empty = plaintext.
  std::string cert;
  std::string key;
  // PEM CA bundle: when set, clients must present a certificate it signed
  // (mutual TLS). Default: "" (no client certificates asked for).
  std::string client_ca;
  // How often the files are checked for a new version. Default: 10.
  int reload_seconds = 10;

  bool enabled() const { return !cert.empty() || !key.empty(); }
};

// Checks the files now (readable PEM, the key matching the certificate), so
// a mistake is a clear start-up error rather than failed handshakes later;
// then the credentials that watch them. Plaintext when !options.enabled().
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(
    const ServerTlsOptions& options);

struct ClientTlsOptions {
  // PEM CA bundle the server's certificate must chain to; "" = the system's.
  std::string ca;
  // The client's certificate and key, for servers that require mutual TLS.
  std::string cert;
  std::string key;
  // The name checked against the server's certificate instead of the host
  // in the target address (for addresses that are not in the certificate).
  std::string server_name;
  // Whether to use TLS at all (set when any field above is, or by --tls).
  bool enabled = false;
};

// Channel credentials of `options` (insecure when !options.enabled); reads
// the files now. `args` receives the server-name override, if any.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(
    const ClientTlsOptions& options, grpc::ChannelArguments* args);

}  // namespace sinkserve::service::security

#endif  // SINKSERVE_SERVICE_SECURITY_TLS_H_
