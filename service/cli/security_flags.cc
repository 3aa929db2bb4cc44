#include "service/cli/security_flags.h"

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace sinkserve::cli {

void AddClientSecurityFlags(std::vector<FlagSpec>* specs) {
  specs->insert(
      specs->end(),
      {{"tls", FlagKind::kBool, "false", "connect with TLS (implied by any --tls-* flag)"},
       {"tls-ca", FlagKind::kString, "", "PEM CA bundle to verify the server; empty = system's"},
       {"tls-cert", FlagKind::kString, "", "PEM client certificate (servers requiring mTLS)"},
       {"tls-key", FlagKind::kString, "", "PEM key of --tls-cert"},
       {"tls-server-name", FlagKind::kString, "",
        "name to verify in the server's certificate instead of the address's host"},
       {"token-file", FlagKind::kString, "",
        "file whose first line is the API key sent as 'authorization: Bearer'; empty = "
        "$SINKSERVE_TOKEN, if set"}});
}

absl::StatusOr<service::security::ClientSecurity> ClientSecurityFromFlags(const FlagSet& flags) {
  service::security::ClientSecurity security;
  security.tls.ca = flags.GetString("tls-ca");
  security.tls.cert = flags.GetString("tls-cert");
  security.tls.key = flags.GetString("tls-key");
  security.tls.server_name = flags.GetString("tls-server-name");
  security.tls.enabled = flags.GetBool("tls") || !security.tls.ca.empty() ||
                         !security.tls.cert.empty() || !security.tls.key.empty() ||
                         !security.tls.server_name.empty();
  absl::StatusOr<std::string> token = service::security::ReadToken(flags.GetString("token-file"));
  if (!token.ok()) return token.status();
  security.token = *std::move(token);
  return security;
}

void AddServerSecurityFlags(std::vector<FlagSpec>* specs) {
  specs->insert(
      specs->end(),
      {{"tls-cert", FlagKind::kString, "", "PEM certificate chain: serve TLS (with --tls-key)"},
       {"tls-key", FlagKind::kString, "", "PEM private key of --tls-cert"},
       {"tls-client-ca", FlagKind::kString, "",
        "PEM CA bundle: require client certificates it signed (mutual TLS)"},
       {"tls-reload-seconds", FlagKind::kInt, "10",
        "how often the certificate files are checked for a rotation"},
       {"tls-ca", FlagKind::kString, "",
        "PEM CA bundle the other replicas' certificates chain to (handoffs); empty = system's"},
       {"auth", FlagKind::kString, "none",
        "who may call: none (anyone; development only), api-keys (--api-keys), jwt (--jwks) "
        "or api-keys,jwt"},
       {"api-keys", FlagKind::kString, "",
        "API key file: NAME sha256:HEX TENANT user|admin per line (sinkserve keys new)"},
       {"jwks", FlagKind::kString, "",
        "JWKS file of the token issuer's public keys (RS256, ES256); re-read on SIGHUP"},
       {"jwt-issuer", FlagKind::kString, "", "the iss every JWT must carry"},
       {"jwt-audience", FlagKind::kString, "", "the aud every JWT must carry (or list)"},
       {"jwt-tenant-claim", FlagKind::kString, "tenant", "the JWT claim naming the tenant"},
       {"jwt-leeway-seconds", FlagKind::kDouble, "30",
        "clock skew allowed on exp and nbf; a stream ends this long after its token's exp"},
       {"audit-log", FlagKind::kString, "",
        "append JSON audit records here ('-' = stderr); empty = none"},
       {"tenant-limits", FlagKind::kString, "",
        "file of per-tenant limits: TENANT [sessions=N] [streams=N] [tokens_per_minute=N]"},
       {"tenant-max-sessions", FlagKind::kInt, "0",
        "stored sessions a tenant may hold; 0 = no limit"},
       {"tenant-max-streams", FlagKind::kInt, "0",
        "Chat streams a tenant may have open on this server; 0 = no limit"},
       {"tenant-tokens-per-minute", FlagKind::kInt, "0",
        "tokens a tenant may generate per minute on this server; 0 = no limit"},
       {"reflection", FlagKind::kBool, "false", "serve gRPC reflection (lists the API)"}});
}

absl::Status ServerSecurityFromFlags(const FlagSet& flags, service::ServerOptions* options) {
  options->tls.cert = flags.GetString("tls-cert");
  options->tls.key = flags.GetString("tls-key");
  options->tls.client_ca = flags.GetString("tls-client-ca");
  options->tls.reload_seconds = static_cast<int>(flags.GetInt("tls-reload-seconds"));
  options->peer_tls.ca = flags.GetString("tls-ca");
  absl::StatusOr<service::security::AuthMode> mode =
      service::security::ParseAuthMode(flags.GetString("auth"));
  if (!mode.ok()) return mode.status();
  options->auth.mode = *mode;
  options->auth.api_keys = flags.GetString("api-keys");
  options->auth.jwks = flags.GetString("jwks");
  options->auth.jwt.issuer = flags.GetString("jwt-issuer");
  options->auth.jwt.audience = flags.GetString("jwt-audience");
  options->auth.jwt.tenant_claim = flags.GetString("jwt-tenant-claim");
  if (flags.GetDouble("jwt-leeway-seconds") < 0) {
    return absl::InvalidArgumentError("--jwt-leeway-seconds must be >= 0");
  }
  options->auth.jwt.leeway = absl::Seconds(flags.GetDouble("jwt-leeway-seconds"));
  options->audit_log = flags.GetString("audit-log");
  options->tenant_limits_file = flags.GetString("tenant-limits");
  for (const char* name :
       {"tenant-max-sessions", "tenant-max-streams", "tenant-tokens-per-minute"}) {
    if (flags.GetInt(name) < 0) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, " must be >= 0"));
    }
  }
  options->tenant_limits.sessions = flags.GetInt("tenant-max-sessions");
  options->tenant_limits.streams = flags.GetInt("tenant-max-streams");
  options->tenant_limits.tokens_per_minute = flags.GetInt("tenant-tokens-per-minute");
  options->reflection = flags.GetBool("reflection");
  return absl::OkStatus();
}

}  // namespace sinkserve::cli
