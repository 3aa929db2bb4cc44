#include "service/server/sinkserve_service.h"

#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "memory/session_state.h"
#include "service/server/chat_stream.h"
#include "service/server/status_util.h"
#include "service/server/tenant_listing.h"

namespace sinkserve::service {
namespace {

constexpr char kSessionIdHeader[] = "x-session-id";
constexpr char kAuthorizationHeader[] = "authorization";

// The reactor of a Chat call refused before it started.
class RefusedStream : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  explicit RefusedStream(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

// The call's x-session-id metadata (what a load balancer hashes to pick the
// replica), if it has one.
std::optional<std::string> RoutingSessionId(const grpc::CallbackServerContext* context) {
  const auto& metadata = context->client_metadata();
  auto it = metadata.find(kSessionIdHeader);
  if (it == metadata.end()) return std::nullopt;
  return std::string(it->second.data(), it->second.size());
}

}  // namespace

bool SinkServeService::RefuseMisrouted(grpc::CallbackServerContext* context,
                                       grpc::ServerUnaryReactor* reactor,
                                       const std::string& session_id) {
  std::optional<std::string> routing_id = RoutingSessionId(context);
  if (!routing_id.has_value() || *routing_id == session_id) return false;
  grpc::Status status(grpc::StatusCode::INVALID_ARGUMENT,
                      absl::StrCat("the x-session-id header names session '", *routing_id,
                                   "' but the request names '", session_id,
                                   "'; send the session id the request is about"));
  CountError(status);
  reactor->Finish(status);
  return true;
}

void SinkServeService::SetServing(const ServingCore& core) {
  core_ = core;
  state_.store(kServing);
}

void SinkServeService::StartDrain() {
  state_.store(kDraining);
  std::lock_guard<std::mutex> lock(mu_);
  for (ChatStream* stream : streams_) stream->Drain();
}

int SinkServeService::open_streams() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(streams_.size());
}

void SinkServeService::EndStreamsOf(const std::string& id, const grpc::Status& status) {
  std::lock_guard<std::mutex> lock(mu_);
  for (ChatStream* stream : streams_) stream->Abort(id, status);
}

int SinkServeService::EndRevokedStreams() {
  const absl::Time now = absl::Now();
  std::lock_guard<std::mutex> lock(mu_);
  int ended = 0;
  for (ChatStream* stream : streams_) {
    if (!security_.auth->Revoked(stream->caller(), now)) continue;
    const bool expired = now > stream->caller().expires;
    security::AuditEvent event;
    event.action = "auth.revoked";
    event.tenant = stream->caller().tenant;
    event.credential = stream->caller().credential;
    event.peer = stream->peer();
    event.result = "UNAUTHENTICATED";
    event.reason = expired ? "JWT past its exp; its open stream ended"
                           : "API key removed from the key file; its open stream ended";
    Audit(nullptr, std::move(event));
    stream->End(grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                             expired ? "credentials expired" : "credentials revoked"));
    ++ended;
  }
  return ended;
}

void SinkServeService::Unregister(ChatStream* stream) {
  std::lock_guard<std::mutex> lock(mu_);
  streams_.erase(stream);
}

void SinkServeService::CountError(const grpc::Status& status) const {
  if (metrics_ != nullptr && !status.ok()) {
    metrics_->IncError(StatusCodeName(static_cast<absl::StatusCode>(status.error_code())));
  }
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* SinkServeService::Chat(
    grpc::CallbackServerContext* context) {
  std::optional<security::Caller> caller = Authenticate(context, "Chat");
  if (!caller.has_value()) return new RefusedStream(Unauthenticated());
  // Registered before it can start a read, so a drain never misses it.
  std::lock_guard<std::mutex> lock(mu_);
  ChatStream* stream =
      ChatStream::Start(this, RoutingSessionId(context), *std::move(caller), context->peer());
  streams_.insert(stream);
  return stream;
}

std::optional<security::Caller> SinkServeService::Authenticate(grpc::CallbackServerContext* context,
                                                               const char* rpc) const {
  const auto& metadata = context->client_metadata();
  auto [first, last] = metadata.equal_range(kAuthorizationHeader);
  std::optional<std::string_view> authorization;
  security::AuthOutcome outcome;
  if (first != last && std::next(first) != last) {
    outcome.reason = "several authorization values";
  } else {
    if (first != last) authorization = std::string_view(first->second.data(), first->second.size());
    outcome = security_.auth->Authenticate(authorization);
  }
  if (outcome.caller.has_value()) return outcome.caller;
  if (metrics_ != nullptr) metrics_->IncAuthFailures();
  CountError(Unauthenticated());
  security::AuditEvent event;
  event.action = "auth.failure";
  event.result = "UNAUTHENTICATED";
  event.reason = absl::StrCat(rpc, ": ", outcome.reason);
  Audit(context, std::move(event));
  return std::nullopt;
}

void SinkServeService::Audit(const grpc::ServerContextBase* context,
                             security::AuditEvent event) const {
  if (security_.audit == nullptr) return;
  if (event.peer.empty() && context != nullptr) event.peer = context->peer();
  security_.audit->Record(event);
}

std::optional<std::string> SinkServeService::TargetTenant(const security::Caller& caller,
                                                          const std::string& requested) {
  if (requested.empty() || requested == caller.tenant) return caller.tenant;
  if (caller.role != security::Role::kAdmin) return std::nullopt;
  return requested;
}

bool SinkServeService::RefuseUnlessServing(grpc::ServerUnaryReactor* reactor, bool allow_draining) {
  const int state = state_.load();
  if (state == kServing || (allow_draining && state == kDraining)) return false;
  grpc::Status status(grpc::StatusCode::UNAVAILABLE, state == kLoading
                                                         ? "the server is still loading its model"
                                                         : "the server is shutting down");
  CountError(status);
  reactor->Finish(status);
  return true;
}

void SinkServeService::RunUnary(grpc::ServerUnaryReactor* reactor,
                                std::function<absl::Status()> work) {
  core_.scheduler->Post([this, reactor, work = std::move(work)] {
    grpc::Status status = ToGrpcStatus(work());
    CountError(status);
    reactor->Finish(status);
  });
}

void SinkServeService::RunOwned(grpc::ServerUnaryReactor* reactor, const std::string& id,
                                std::function<absl::Status()> work) {
  core_.ownership->Claim(id, [this, reactor, id, work = std::move(work)](
                                 const absl::StatusOr<memory::Acquired>& owned) mutable {
    core_.scheduler->Post([this, reactor, id, owned, work = std::move(work)] {
      absl::Status status = owned.status();
      if (owned.ok()) {
        // It moved here from another server: a copy in memory is stale.
        if (owned->cause != memory::AcquireCause::kHeld) core_.sessions->Evict(id);
        status = work();
      }
      core_.ownership->Unclaim(id);
      grpc::Status grpc_status = ToGrpcStatus(status);
      CountError(grpc_status);
      reactor->Finish(grpc_status);
    });
  });
}

std::optional<SinkServeService::SessionTarget> SinkServeService::Admit(
    grpc::CallbackServerContext* context, grpc::ServerUnaryReactor* reactor, const char* rpc,
    const std::string& session_id, const std::string& tenant, bool allow_draining) {
  std::optional<security::Caller> caller = Authenticate(context, rpc);
  if (!caller.has_value()) {
    reactor->Finish(Unauthenticated());  // Authenticate counted it
    return std::nullopt;
  }
  if (RefuseUnlessServing(reactor, allow_draining)) return std::nullopt;
  if (RefuseMisrouted(context, reactor, session_id)) return std::nullopt;
  if (absl::Status s = security::ValidateClientSessionId(session_id); !s.ok()) {
    Refuse(reactor, ToGrpcStatus(s));
    return std::nullopt;
  }
  std::optional<std::string> owner = TargetTenant(*caller, tenant);
  if (!owner.has_value()) {
    Refuse(reactor, ToGrpcStatus(NoSessionError(session_id)));
    return std::nullopt;
  }
  std::string scoped = security::ScopedId(*owner, session_id);
  return SessionTarget{*std::move(caller), session_id, *std::move(owner), std::move(scoped)};
}

grpc::ServerUnaryReactor* SinkServeService::CreateSession(grpc::CallbackServerContext* context,
                                                          const v1::CreateSessionRequest* request,
                                                          v1::SessionInfo* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  std::optional<SessionTarget> target =
      Admit(context, reactor, "CreateSession", request->session_id(), "", /*allow_draining=*/false);
  if (!target.has_value()) return reactor;
  RunOwned(reactor, target->scoped,
           [this, context, request, response, target = *target]() -> absl::Status {
             // The session manager checks the resolved config before storing it
             // (SessionManagerOptions::check_new_session).
             absl::StatusOr<v1::SessionInfo> info =
                 core_.sessions->CreateDetached(target.scoped, request->config());
             absl::Status status = security::Unscoped(info.status(), target.scoped, target.plain);
             AuditSession(context, target.caller, "session.create", target.tenant, target.plain,
                          status);
             if (!status.ok()) return status;
             *response = *std::move(info);
             response->set_session_id(target.plain);
             response->set_tenant(target.tenant);
             return absl::OkStatus();
           });
  return reactor;
}

grpc::ServerUnaryReactor* SinkServeService::GetSession(grpc::CallbackServerContext* context,
                                                       const v1::GetSessionRequest* request,
                                                       v1::SessionInfo* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  std::optional<SessionTarget> target =
      Admit(context, reactor, "GetSession", request->session_id(), request->tenant(),
            /*allow_draining=*/true);
  if (!target.has_value()) return reactor;
  if (target->tenant != target->caller.tenant) {
    AuditSession(context, target->caller, "admin.get", target->tenant, target->plain,
                 absl::OkStatus());
  }
  RunUnary(reactor, [this, response, target = *std::move(target)]() -> absl::Status {
    absl::StatusOr<v1::SessionInfo> info = core_.sessions->Info(target.scoped);
    if (!info.ok()) return security::Unscoped(info.status(), target.scoped, target.plain);
    *response = *std::move(info);
    response->set_session_id(target.plain);
    response->set_tenant(target.tenant);
    return absl::OkStatus();
  });
  return reactor;
}

grpc::ServerUnaryReactor* SinkServeService::ListSessions(grpc::CallbackServerContext* context,
                                                         const v1::ListSessionsRequest* request,
                                                         v1::ListSessionsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  std::optional<security::Caller> caller = Authenticate(context, "ListSessions");
  if (!caller.has_value()) {
    reactor->Finish(Unauthenticated());  // Authenticate counted it
    return reactor;
  }
  if (RefuseUnlessServing(reactor, /*allow_draining=*/true)) return reactor;
  std::optional<std::string> tenant = TargetTenant(*caller, request->tenant());
  if (!tenant.has_value() || (request->all_tenants() && caller->role != security::Role::kAdmin)) {
    // Listing names no session, so refusing it openly confirms nothing.
    return Refuse(reactor, grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                                        "only an admin may list other tenants' sessions"));
  }
  if (!request->all_tenants() && *tenant != caller->tenant) {
    if (absl::Status s = memory::ValidateTenantName(*tenant); !s.ok()) {
      return Refuse(reactor, ToGrpcStatus(s));
    }
  }
  if (request->all_tenants() || *tenant != caller->tenant) {
    AuditSession(context, *caller, "admin.list", request->all_tenants() ? "*" : *tenant, "",
                 absl::OkStatus());
  }
  RunUnary(reactor, [this, request, response, tenant = *tenant]() -> absl::Status {
    StoreListFn list = [this](const v1::ListSessionsRequest& r) { return core_.sessions->List(r); };
    absl::StatusOr<v1::ListSessionsResponse> page = request->all_tenants()
                                                        ? ListAllTenants(list, *request)
                                                        : ListTenant(list, tenant, *request);
    if (!page.ok()) return page.status();
    *response = *std::move(page);
    return absl::OkStatus();
  });
  return reactor;
}

grpc::ServerUnaryReactor* SinkServeService::DeleteSession(grpc::CallbackServerContext* context,
                                                          const v1::DeleteSessionRequest* request,
                                                          v1::DeleteSessionResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  std::optional<SessionTarget> target =
      Admit(context, reactor, "DeleteSession", request->session_id(), request->tenant(),
            /*allow_draining=*/false);
  if (!target.has_value()) return reactor;
  RunOwned(reactor, target->scoped, [this, context, target = *target]() -> absl::Status {
    absl::Status status =
        security::Unscoped(core_.sessions->Delete(target.scoped), target.scoped, target.plain);
    const bool admin = target.tenant != target.caller.tenant;
    AuditSession(context, target.caller, admin ? "admin.delete" : "session.delete", target.tenant,
                 target.plain, status);
    return status;
  });
  return reactor;
}

grpc::ServerUnaryReactor* SinkServeService::Refuse(grpc::ServerUnaryReactor* reactor,
                                                   const grpc::Status& status) const {
  CountError(status);
  reactor->Finish(status);
  return reactor;
}

void SinkServeService::AuditSession(const grpc::ServerContextBase* context,
                                    const security::Caller& caller, const char* action,
                                    const std::string& owner, const std::string& session,
                                    const absl::Status& status) const {
  const bool admin = !owner.empty() && owner != caller.tenant;
  if (admin && metrics_ != nullptr) metrics_->IncAdminActions();
  security::AuditEvent event;
  event.action = action;
  event.tenant = caller.tenant;
  event.credential = caller.credential;
  if (admin) event.owner = owner;
  event.session = session;
  event.result = StatusCodeName(status.code());
  Audit(context, std::move(event));
}

}  // namespace sinkserve::service
