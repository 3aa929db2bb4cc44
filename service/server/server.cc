#include "service/server/server.h"

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <future>
#include <memory>
#include <optional>
#include <sstream>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/support/server_interceptor.h"
#include "grpcpp/version_info.h"
#include "memory/null_session_store.h"
#include "memory/rados_session_store.h"
#include "memory/status_macros.h"
#include "service/server/log.h"

namespace sinkserve::service {
namespace {

// Answers NOT_SERVING in the first response of one health call.
class NotServingOnce : public grpc::experimental::Interceptor {
 public:
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (!done_ && methods->QueryInterceptionHookPoint(
                      grpc::experimental::InterceptionHookPoints::PRE_SEND_MESSAGE)) {
      done_ = true;
      if (grpc::ByteBuffer* message = methods->GetSerializedSendMessage(); message != nullptr) {
        // grpc.health.v1.HealthCheckResponse{status: NOT_SERVING}, hand-encoded
        // (Debian ships no health stubs): field 1, varint 2.
        static constexpr uint8_t kNotServing[] = {0x08, 0x02};
        grpc::Slice slice(kNotServing, sizeof(kNotServing));
        *message = grpc::ByteBuffer(&slice, 1);
      }
    }
    methods->Proceed();
  }

 private:
  bool done_ = false;
};

// gRPC's default health service starts out SERVING for "" and answers as soon
// as the port listens, before Start() can set it NOT_SERVING: a probe landing
// in between would call a server without a model ready. gRPC 1.51 has no hook
// between creating that service and listening (plugins run before it exists or
// after the port is up), so health calls that begin before Close() (called
// once the status is NOT_SERVING) have their first answer (a Check's only one,
// a Watch's initial status) replaced by NOT_SERVING. Later calls are not
// intercepted at all.
class EarlyHealthGate : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  void Close() { closed_.store(true, std::memory_order_release); }

  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    if (closed_.load(std::memory_order_acquire) || info->method() == nullptr) return nullptr;
    const std::string_view method = info->method();
    if (method != "/grpc.health.v1.Health/Check" && method != "/grpc.health.v1.Health/Watch") {
      return nullptr;
    }
    return new NotServingOnce();
  }

 private:
  std::atomic<bool> closed_{false};
};

// Where other replicas reach this one: `advertise`, else the listen
// address with its real port and, for an unspecified host, the host name.
std::string AdvertiseAddress(const std::string& advertise, const std::string& listen, int port) {
  if (!advertise.empty()) return advertise;
  std::string host = listen.substr(0, listen.rfind(':'));
  if (host.empty() || host == "0.0.0.0" || host == "[::]" || host == "::") {
    char name[256] = {};
    host = ::gethostname(name, sizeof(name) - 1) == 0 ? name : "localhost";
  }
  return absl::StrCat(host, ":", port);
}

// gRPC's reflection library adds itself to every server built after it is
// loaded (a static initializer), so it is not linked in: --reflection loads it.
absl::Status LoadReflection() {
  const std::string versioned =
      absl::StrCat("libgrpc++_reflection.so.", GRPC_CPP_VERSION_MAJOR, ".", GRPC_CPP_VERSION_MINOR);
  for (const std::string& name : {versioned, std::string("libgrpc++_reflection.so")}) {
    if (dlopen(name.c_str(), RTLD_NOW | RTLD_GLOBAL) != nullptr) return absl::OkStatus();
  }
  const char* error = dlerror();
  return absl::FailedPreconditionError(absl::StrCat("--reflection: cannot load ", versioned, ": ",
                                                    error != nullptr ? error : "unknown error"));
}

}  // namespace

absl::StatusOr<memory::RadosSessionStoreOptions> ParseRadosUrl(std::string_view url) {
  constexpr std::string_view kScheme = "rados://";
  if (url.substr(0, kScheme.size()) != kScheme) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--store ", std::string(url), ": expected rados://POOL?conf=PATH[&ns=NAMESPACE]"));
  }
  std::string_view rest = url.substr(kScheme.size());
  memory::RadosSessionStoreOptions o;
  const size_t q = rest.find('?');
  o.pool = std::string(rest.substr(0, q));
  if (q != std::string_view::npos) {
    std::string_view params = rest.substr(q + 1);
    while (!params.empty()) {
      const size_t amp = params.find('&');
      const std::string_view param = params.substr(0, amp);
      params = amp == std::string_view::npos ? std::string_view() : params.substr(amp + 1);
      const size_t eq = param.find('=');
      const std::string key(param.substr(0, eq));
      const std::string value(eq == std::string_view::npos ? "" : param.substr(eq + 1));
      if (key == "conf") {
        o.conf_path = value;
      } else if (key == "ns") {
        o.rados_namespace = value;
      } else if (key == "id") {
        o.client_id = value;
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("--store ", std::string(url), ": unknown parameter '", key,
                         "' (conf, ns, id)"));
      }
    }
  }
  if (o.pool.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--store ", std::string(url), ": no pool"));
  }
  return o;
}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(
    const ServerOptions& options,
    const std::function<void(int port, int metrics_port)>& on_listening) {
  if (options.db.empty() && options.store.empty()) {
    return absl::InvalidArgumentError("--db or --store is required");
  }
  std::optional<memory::RadosSessionStoreOptions> rados;
  if (!options.store.empty()) {
    SINKSERVE_ASSIGN_OR_RETURN(rados, ParseRadosUrl(options.store));
  }
  auto server = std::unique_ptr<Server>(new Server());
  MetricsOptions metrics_options;
  metrics_options.listen_address = options.metrics_listen;
  SINKSERVE_ASSIGN_OR_RETURN(server->metrics_, Metrics::Create(metrics_options));
  SINKSERVE_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials,
                             security::ServerCredentials(options.tls));
  SINKSERVE_RETURN_IF_ERROR(server->StartSecurity(options));

  // Listen first with health NOT_SERVING, so orchestrators see the process
  // alive but not ready while a large model loads.
  grpc::EnableDefaultHealthCheckService(true);
  if (options.reflection) SINKSERVE_RETURN_IF_ERROR(LoadReflection());
  ServiceSecurity service_security;
  service_security.auth = server->auth_.get();
  service_security.audit = server->audit_.get();
  service_security.quotas = server->quotas_.get();
  server->service_ = std::make_unique<SinkServeService>(server->metrics_.get(), service_security);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, credentials, &server->port_);
  builder.RegisterService(server->service_.get());
  if (rados) {
    // Handoffs between replicas, on the same port (answered once serving).
    server->handoff_ = std::make_unique<HandoffService>(server->service_.get());
    builder.RegisterService(server->handoff_.get());
  }
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  auto gate = std::make_unique<EarlyHealthGate>();
  EarlyHealthGate* early_health = gate.get();  // owned by the grpc::Server
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::move(gate));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  server->grpc_server_ = builder.BuildAndStart();
  if (server->grpc_server_ != nullptr) {
    server->grpc_server_->GetHealthCheckService()->SetServingStatus(false);
    early_health->Close();
  }
  if (server->grpc_server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen));
  }
  if (on_listening) on_listening(server->port_, server->metrics_->port());

  SINKSERVE_ASSIGN_OR_RETURN(server->model_, ServingModel::Load(options.model));
  server->encoder_ = std::make_unique<TurnEncoder>(*server->model_->tokenizer);
  // Durability is the checkpoint writers': they sync the store once for each
  // group of checkpoints they write (group commit) instead of per write.
  if (rados) {
    SINKSERVE_ASSIGN_OR_RETURN(std::unique_ptr<memory::RadosSessionStore> store,
                               memory::RadosSessionStore::Open(*rados));
    server->rados_ = store.get();
    server->store_ = std::move(store);
    memory::RadosLeaseOptions lease_options;
    lease_options.duration = options.lease;
    lease_options.address =
        AdvertiseAddress(options.advertise_address, options.listen, server->port_);
    grpc::ChannelArguments peer_args;
    security::ClientTlsOptions peer_tls = options.peer_tls;
    peer_tls.enabled = options.tls.enabled();
    if (peer_tls.enabled && peer_tls.cert.empty() && peer_tls.key.empty()) {
      // Its own identity: the replicas may require client certificates.
      peer_tls.cert = options.tls.cert;
      peer_tls.key = options.tls.key;
    }
    SINKSERVE_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> peer_credentials,
                               security::ChannelCredentials(peer_tls, &peer_args));
    server->handoff_client_ =
        std::make_unique<HandoffClient>(std::move(peer_credentials), std::move(peer_args));
    lease_options.handoff = server->handoff_client_->AsFn();
    // Long enough for an owner to end a turn and write its checkpoint, short
    // enough that a silent owner costs little more than its lease.
    lease_options.handoff_timeout =
        std::clamp(options.lease * 0.75, absl::Milliseconds(300), absl::Seconds(5));
    Server* self = server.get();
    lease_options.on_lost = [self](const std::string& id) { self->PostEvict(id); };
    SINKSERVE_ASSIGN_OR_RETURN(server->leases_,
                               memory::RadosLeases::Start(server->rados_, lease_options));
    ServerLog("session leases of ", absl::FormatDuration(options.lease), "; handoffs reach ",
              lease_options.address);
  } else if (options.db == kNoStore) {
    server->store_ = std::make_unique<memory::NullSessionStore>();
  } else {
    memory::RocksDbSessionStoreOptions store_options;
    store_options.sync = false;
    SINKSERVE_ASSIGN_OR_RETURN(std::unique_ptr<memory::RocksDbSessionStore> rocksdb,
                               memory::RocksDbSessionStore::Open(options.db, store_options));
    server->rocksdb_ = rocksdb.get();
    server->store_ = std::move(rocksdb);
  }
  server->ownership_ =
      std::make_unique<SessionOwnership>(server->leases_.get(), server->metrics_.get());
  SessionManagerOptions session_options = options.sessions;
  session_options.sync = options.sync;
  session_options.on_resident = [ownership = server->ownership_.get()](const std::string& id,
                                                                       bool resident) {
    ownership->SetResident(id, resident);
  };
  if (server->quotas_ != nullptr) {
    session_options.tenant_session_limit = [quotas =
                                                server->quotas_.get()](std::string_view tenant) {
      return quotas->LimitsOf(tenant).sessions;
    };
  }
  session_options.on_fenced = [self = server.get()](const std::string& id) {
    self->PostEvict(id);
  };
  // Refused before it is stored: no turn of such a session could run, or its
  // pinned system prompt would leave too small a window.
  session_options.check_new_session = [encoder = server->encoder_.get(),
                                       model = server->model_.get(),
                                       limits = options.limits.turn](
                                          const engine::SessionConfig& config) -> absl::Status {
    SINKSERVE_ASSIGN_OR_RETURN(ChatTemplateSelection selection,
                               SelectChatTemplate(config.chat_template, model->chat_info));
    return CheckSystemPromptFits(*encoder, selection.chat_template, config, limits);
  };
  // The scheduler exists only later; writers may call this before and after.
  auto scheduler_slot = std::make_shared<std::atomic<Scheduler*>>(nullptr);
  session_options.on_checkpoint_room = [scheduler_slot] {
    if (Scheduler* scheduler = scheduler_slot->load()) scheduler->Wake();
  };
  server->scheduler_slot_ = scheduler_slot;
  SINKSERVE_ASSIGN_OR_RETURN(server->sessions_,
                             SessionManager::Create(server->model_.get(), server->store_.get(),
                                                    server->metrics_.get(), session_options));
  SchedulerOptions scheduler_options = options.scheduler;
  scheduler_options.metrics = server->metrics_.get();
  scheduler_options.after_step = [sessions = server->sessions_.get()] {
    if (absl::Status s = sessions->Sweep(); !s.ok()) {
      ServerLog("dropping idle sessions: ", s.ToString());
    }
  };
  // Backpressure: while the checkpoint writers are behind, new turns wait.
  scheduler_options.admit = [sessions = server->sessions_.get()] {
    return sessions->AdmitTurns();
  };
  server->scheduler_ =
      std::make_unique<Scheduler>(server->model_->backend.get(), scheduler_options);
  scheduler_slot->store(server->scheduler_.get());
  server->StartSweeper(options.sessions.idle_timeout);

  ServingCore core;
  core.model = server->model_.get();
  core.encoder = server->encoder_.get();
  core.sessions = server->sessions_.get();
  core.scheduler = server->scheduler_.get();
  core.ownership = server->ownership_.get();
  core.metrics = server->metrics_.get();
  core.limits = options.limits;
  server->service_->SetServing(core);
  if (server->leases_ != nullptr) {
    server->handoff_->Enable(server->leases_->cookie(), options.lease * 0.6);
    server->StartReporter();
  }
  server->grpc_server_->GetHealthCheckService()->SetServingStatus(true);
  return server;
}

absl::Status Server::StartSecurity(const ServerOptions& options) {
  SINKSERVE_ASSIGN_OR_RETURN(auth_, security::Authenticator::Create(options.auth));
  metrics_->SetAuthMode(security::AuthModeName(options.auth.mode));
  if (options.auth.mode == security::AuthMode::kNone) {
    ServerLog("WARNING: --auth none: anyone who reaches ", options.listen,
              " may read, continue and delete every session. Use --auth api-keys (and TLS) "
              "on any network you do not fully trust.");
  } else {
    ServerLog("authentication: ", security::AuthModeName(options.auth.mode), " (", auth_->keys(),
              " keys from ", options.auth.api_keys,
              options.auth.api_keys.empty() || options.auth.jwks.empty() ? "" : " and ",
              options.auth.jwks, ")");
  }
  if (!options.tls.enabled()) {
    ServerLog("WARNING: plaintext gRPC on ", options.listen,
              ": credentials and conversations cross the network unencrypted (--tls-cert, "
              "--tls-key)");
  } else {
    ServerLog("TLS with ", options.tls.cert,
              options.tls.client_ca.empty() ? "" : " (client certificates required)",
              "; certificate files re-read every ", options.tls.reload_seconds, " s");
  }
  if (!options.audit_log.empty()) {
    SINKSERVE_ASSIGN_OR_RETURN(audit_, security::AuditLog::Open(options.audit_log));
  }
  tenant_limits_file_ = options.tenant_limits_file;
  tenant_limit_defaults_ = options.tenant_limits;
  SINKSERVE_ASSIGN_OR_RETURN(auto overrides, ReadTenantLimits());
  quotas_ = std::make_unique<security::TenantQuotas>(options.tenant_limits, std::move(overrides));
  return absl::OkStatus();
}

absl::StatusOr<std::map<std::string, security::TenantLimits>> Server::ReadTenantLimits() const {
  if (tenant_limits_file_.empty()) return std::map<std::string, security::TenantLimits>();
  std::ifstream in(tenant_limits_file_, std::ios::binary);
  if (!in)
    return absl::NotFoundError(absl::StrCat("cannot read --tenant-limits ", tenant_limits_file_));
  std::ostringstream text;
  text << in.rdbuf();
  return security::ParseTenantLimits(text.str(), tenant_limits_file_, tenant_limit_defaults_);
}

absl::Status Server::Reload() {
  absl::Status first = auth_->Reload();
  if (!first.ok()) ServerLog("reload: keeping the old API keys: ", first.ToString());
  absl::StatusOr<std::map<std::string, security::TenantLimits>> limits = ReadTenantLimits();
  if (limits.ok()) {
    quotas_->SetOverrides(*std::move(limits));
  } else {
    ServerLog("reload: keeping the old tenant limits: ", limits.status().ToString());
    if (first.ok()) first = limits.status();
  }
  if (audit_ != nullptr) {
    if (absl::Status s = audit_->Reopen(); !s.ok()) {
      ServerLog("reload: audit log: ", s.ToString());
      if (first.ok()) first = s;
    }
  }
  if (first.ok()) ServerLog("reloaded: ", auth_->keys(), " API keys, tenant limits, audit log");
  if (const int ended = service_->EndRevokedStreams(); ended > 0) {
    ServerLog("ended ", ended, " streams of revoked or expired credentials");
  }
  return first;
}

void Server::StartSweeper(absl::Duration idle_timeout) {
  // Sessions also leave memory when the manager is next used (every attach,
  // detach and checkpoint sweeps); this covers a server that goes quiet.
  const absl::Duration sweep_every =
      idle_timeout > absl::ZeroDuration()
          ? std::clamp(idle_timeout / 4, absl::Seconds(1), absl::Seconds(60))
          : absl::InfiniteDuration();
  // Streams whose JWT expired end within this long of its exp.
  const absl::Duration check_every = std::min(sweep_every, absl::Seconds(5));
  sweeper_ = std::thread([this, sweep_every, check_every] {
    absl::Time next_sweep = absl::Now() + sweep_every;
    while (!stop_sweeper_.WaitForNotificationWithTimeout(check_every)) {
      if (const int ended = service_->EndRevokedStreams(); ended > 0) {
        ServerLog("ended ", ended, " streams of revoked or expired credentials");
      }
      if (absl::Now() < next_sweep) continue;
      next_sweep = absl::Now() + sweep_every;
      scheduler_->Post([this] {
        if (absl::Status s = sessions_->Sweep(); !s.ok()) {
          ServerLog("dropping idle sessions: ", s.ToString());
        }
      });
    }
  });
}

void Server::StopSweeper() {
  if (!sweeper_.joinable()) return;
  stop_sweeper_.Notify();
  sweeper_.join();
}

void Server::StartReporter() {
  reporter_ = std::thread([this] {
    do {
      const memory::LeaseStats lease = leases_->stats();
      Metrics::OwnershipTotals totals;
      totals.owned = lease.owned;
      totals.renewals = lease.renewals;
      totals.renewal_errors = lease.renewal_errors;
      totals.losses = lease.lost;
      totals.releases = lease.released;
      totals.fenced_writes = rados_->stats().fenced_writes;
      metrics_->SetOwnership(totals);
    } while (!stop_reporter_.WaitForNotificationWithTimeout(absl::Milliseconds(250)));
  });
}

void Server::StopReporter() {
  if (!reporter_.joinable()) return;
  stop_reporter_.Notify();
  reporter_.join();
}

void Server::PostEvict(const std::string& id) {
  std::lock_guard<std::mutex> lock(evict_mu_);
  Scheduler* scheduler = scheduler_slot_ != nullptr ? scheduler_slot_->load() : nullptr;
  if (!accept_evicts_ || scheduler == nullptr) return;
  scheduler->Post([this, id] {
    sessions_->Evict(id);
    service_->EndStreamsOf(
        id, grpc::Status(grpc::StatusCode::UNAVAILABLE,
                         absl::StrCat("session ", id, " is owned by another server now; retry")));
  });
}

absl::Status Server::Drain(absl::Duration grace) {
  if (drained_) return absl::OkStatus();
  drained_ = true;
  StopSweeper();
  grpc_server_->GetHealthCheckService()->SetServingStatus(false);
  service_->StartDrain();
  ServerLog("draining: waiting up to ", absl::FormatDuration(grace), " for running turns");

  // Ask the scheduler thread how many turns still run, until none or the
  // grace period is over.
  auto active_turns = [this] {
    std::promise<int> promise;
    std::future<int> future = promise.get_future();
    scheduler_->Post([&] { promise.set_value(scheduler_->active_turns()); });
    return future.get();
  };
  const absl::Time deadline = absl::Now() + grace;
  int active = active_turns();
  while (active > 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
    active = active_turns();
  }
  if (active > 0) ServerLog("grace period over: cancelling ", active, " turns");

  // Cancel what is left (it ends at the scheduler's next step), then
  // checkpoint everything, on the scheduler thread.
  scheduler_->Post([this] { scheduler_->CancelAll(); });
  while (active_turns() > 0) absl::SleepFor(absl::Milliseconds(5));
  std::promise<absl::Status> saved;
  std::future<absl::Status> saved_status = saved.get_future();
  scheduler_->Post([&] { saved.set_value(sessions_->CheckpointAll()); });
  absl::Status status = saved_status.get();
  if (!status.ok()) ServerLog("checkpoint during drain failed: ", status.ToString());
  if (leases_ != nullptr) {
    // Every session is durable: the replicas that get them next need not
    // wait for a lease (a rolling restart moves sessions at once).
    StopReporter();
    if (absl::Status released = leases_->ReleaseAll(); !released.ok()) {
      ServerLog("releasing session leases: ", released.ToString());
    } else {
      ServerLog("released every session lease");
    }
  }

  service_->StartDrain();  // streams whose turn just ended
  if (handoff_ != nullptr) handoff_->Stop();
  grpc_server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  scheduler_->Stop();
  if (absl::Status flushed = rocksdb_ != nullptr ? rocksdb_->Flush() : absl::OkStatus();
      !flushed.ok()) {
    ServerLog("store flush failed: ", flushed.ToString());
  }
  const SchedulerStats stats = scheduler_->stats();
  ServerLog("drained (", stats.steps, " batched steps, ", stats.turns_stepped,
            " turn steps: mean batch ",
            stats.steps > 0 ? static_cast<double>(stats.turns_stepped) / stats.steps : 0.0,
            ")");
  return status;
}

Server::~Server() {
  StopSweeper();
  StopReporter();
  if (handoff_ != nullptr) handoff_->Stop();
  if (grpc_server_ != nullptr) {
    grpc_server_->Shutdown(std::chrono::system_clock::now());
    grpc_server_->Wait();
  }
  // Claims still queued end (their opens run on the scheduler, still up).
  if (ownership_ != nullptr) ownership_->Shutdown();
  {
    std::lock_guard<std::mutex> lock(evict_mu_);
    accept_evicts_ = false;
  }
  if (scheduler_ != nullptr) scheduler_->Stop();
  if (scheduler_slot_ != nullptr) scheduler_slot_->store(nullptr);
  // Writes what is still queued while the store (and its fences) is open.
  sessions_.reset();
  ownership_.reset();
  leases_.reset();
}

}  // namespace sinkserve::service
