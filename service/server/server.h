// Server: the whole `sinkserve serve` process minus flag parsing. Starts the
// gRPC server (SinkServe + grpc.health.v1 + reflection) at once with health
// NOT_SERVING, loads the model and opens the store, then turns SERVING.
// Drain() is the SIGTERM path.
#ifndef SINKSERVE_SERVICE_SERVER_SERVER_H_
#define SINKSERVE_SERVICE_SERVER_SERVER_H_

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "memory/rados_leases.h"
#include "memory/rados_session_store.h"
#include "memory/rocksdb_session_store.h"
#include "service/chat_template.h"
#include "service/metrics.h"
#include "service/security/audit_log.h"
#include "service/security/authenticator.h"
#include "service/security/tenant_limits.h"
#include "service/security/tls.h"
#include "service/server/handoff.h"
#include "service/server/scheduler.h"
#include "service/server/serving_model.h"
#include "service/server/session_manager.h"
#include "service/server/session_ownership.h"
#include "service/server/sinkserve_service.h"

namespace sinkserve::service {

// ServerOptions::db of a server that keeps nothing (memory::NullSessionStore).
inline constexpr char kNoStore[] = "none";

struct ServerOptions {
  // Default: "" (required).
  ServingModelOptions model;
  // Session store directory, created if missing, or kNoStore: nothing is
  // durable (sessions live in memory only; for benchmarks). Default: ""
  // (required).
  std::string db;
  // A shared store instead of `db`: "rados://POOL?conf=PATH[&ns=NAMESPACE][&id=CLIENT]"
  // (memory::RadosSessionStore; several servers may use one pool). "" uses
  // `db`. Default: "".
  std::string store;
  // With a shared store: how long a session's lease lasts unrenewed, i.e.
  // how long sessions of a replica that stopped answering (paused,
  // partitioned) wait before another replica takes them. A dead replica's
  // sessions move at once. Default: 2 s.
  absl::Duration lease = absl::Seconds(2);
  // With a shared store: where the other replicas reach this one (host:port)
  // to ask for a session. "" = the address listened on, with an unspecified
  // host (0.0.0.0, [::]) replaced by this machine's host name. Default: "".
  std::string advertise_address;
  // gRPC address; port 0 picks a free one (see Server::port()).
  // Default: "127.0.0.1:50051".
  std::string listen = "127.0.0.1:50051";
  // Prometheus /metrics address; "" = none. Default: "".
  std::string metrics_listen;
  // Largest request message; gRPC refuses bigger ones with RESOURCE_EXHAUSTED.
  // Default: 1 MiB.
  int max_message_bytes = 1 << 20;
  SessionManagerOptions sessions;
  ServiceLimits limits;
  SchedulerOptions scheduler;
  // fsync every checkpoint (survives power loss, not only a crash).
  // Default: true.
  bool sync = true;
  // TLS on the gRPC port (plaintext when unset). With a shared store the
  // replicas' handoff calls use it too: `peer_tls` says how to reach the
  // others (its cert/key default to this server's own).
  security::ServerTlsOptions tls;
  security::ClientTlsOptions peer_tls;
  // Who may call. Default: none (anyone who reaches the port; logged loudly).
  security::AuthOptions auth;
  // Audit log path ("-" = stderr); "" = none. Default: "".
  std::string audit_log;
  // Per-tenant limits: the defaults, and a file of overrides ("" = none).
  security::TenantLimits tenant_limits;
  std::string tenant_limits_file;
  // Serve gRPC reflection (lets anyone who can call list the API). Default: false.
  bool reflection = false;
};

// "rados://POOL?conf=PATH[&ns=NAMESPACE][&id=CLIENT]" as store options;
// INVALID_ARGUMENT for anything else.
absl::StatusOr<memory::RadosSessionStoreOptions> ParseRadosUrl(std::string_view url);

class Server {
 public:
  // Returns once the model is loaded and the server is SERVING. `on_listening`
  // (optional) runs as soon as the port is bound, while the model loads.
  static absl::StatusOr<std::unique_ptr<Server>> Start(
      const ServerOptions& options,
      const std::function<void(int port, int metrics_port)>& on_listening = nullptr);
  ~Server();

  int port() const { return port_; }
  int metrics_port() const { return metrics_ ? metrics_->port() : 0; }

  // SIGHUP: re-reads the API keys and the tenant limits, reopens the audit
  // log. On an error the old ones stay in force. (Certificates are watched
  // files: ServerTlsOptions::reload_seconds.)
  absl::Status Reload();

  // SIGTERM: health NOT_SERVING, refuse new work, let running turns finish
  // for up to `grace` (then cancel them), checkpoint every dirty session,
  // close the streams and stop. The first checkpoint error is returned.
  absl::Status Drain(absl::Duration grace);

 private:
  Server() = default;
  // Authentication, audit log and tenant quotas of `options`.
  absl::Status StartSecurity(const ServerOptions& options);
  // The --tenant-limits overrides (none without a file).
  absl::StatusOr<std::map<std::string, security::TenantLimits>> ReadTenantLimits() const;
  // A thread that posts SessionManager::Sweep to the scheduler every
  // idle_timeout / 4 (1 s to 60 s; never for a zero timeout), so idle
  // sessions leave memory even when no request comes, and every 5 s at most
  // ends the streams whose credentials expired.
  void StartSweeper(absl::Duration idle_timeout);
  void StopSweeper();
  // Shared store: publishes the lease and fencing totals 4 times a second.
  void StartReporter();
  void StopReporter();
  // Another server owns `id` now: drop it here, end its stream.
  void PostEvict(const std::string& id);

  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<security::Authenticator> auth_;
  std::unique_ptr<security::AuditLog> audit_;
  std::unique_ptr<security::TenantQuotas> quotas_;
  std::string tenant_limits_file_;
  security::TenantLimits tenant_limit_defaults_;
  std::unique_ptr<SinkServeService> service_;
  std::unique_ptr<grpc::Server> grpc_server_;
  std::unique_ptr<ServingModel> model_;
  std::unique_ptr<TurnEncoder> encoder_;
  std::unique_ptr<memory::SessionStore> store_;
  memory::RocksDbSessionStore* rocksdb_ = nullptr;  // store_, when it is one
  memory::RadosSessionStore* rados_ = nullptr;       // store_, when it is one
  // Shared store only: leases, the handoff client and service.
  std::unique_ptr<HandoffClient> handoff_client_;
  std::unique_ptr<HandoffService> handoff_;
  std::unique_ptr<memory::RadosLeases> leases_;
  std::unique_ptr<SessionOwnership> ownership_;
  std::unique_ptr<SessionManager> sessions_;
  std::unique_ptr<Scheduler> scheduler_;
  // What the checkpoint writers wake when they have room again.
  std::shared_ptr<std::atomic<Scheduler*>> scheduler_slot_;
  std::thread sweeper_;
  absl::Notification stop_sweeper_;
  std::thread reporter_;
  absl::Notification stop_reporter_;
  std::mutex evict_mu_;
  bool accept_evicts_ = true;  // guarded by evict_mu_
  int port_ = 0;
  bool drained_ = false;
};

}  // namespace sinkserve::service

#endif  // SINKSERVE_SERVICE_SERVER_SERVER_H_
