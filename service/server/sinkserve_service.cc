#include "service/server/sinkserve_service.h"

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "service/server/chat_stream.h"
#include "service/server/status_util.h"

namespace sinkserve::service {
namespace {

constexpr char kSessionIdHeader[] = "x-session-id";

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
  // Registered before it can start a read, so a drain never misses it.
  std::lock_guard<std::mutex> lock(mu_);
  ChatStream* stream = ChatStream::Start(this, RoutingSessionId(context));
  streams_.insert(stream);
  return stream;
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

grpc::ServerUnaryReactor* SinkServeService::CreateSession(grpc::CallbackServerContext* context,
                                                          const v1::CreateSessionRequest* request,
                                                          v1::SessionInfo* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (RefuseUnlessServing(reactor, /*allow_draining=*/false)) return reactor;
  if (RefuseMisrouted(context, reactor, request->session_id())) return reactor;
  RunOwned(reactor, request->session_id(), [this, request, response]() -> absl::Status {
    // The session manager checks the resolved config before storing it
    // (SessionManagerOptions::check_new_session).
    absl::StatusOr<v1::SessionInfo> info =
        core_.sessions->CreateDetached(request->session_id(), request->config());
    if (!info.ok()) return info.status();
    *response = std::move(*info);
    return absl::OkStatus();
  });
  return reactor;
}

grpc::ServerUnaryReactor* SinkServeService::GetSession(grpc::CallbackServerContext* context,
                                                       const v1::GetSessionRequest* request,
                                                       v1::SessionInfo* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (RefuseUnlessServing(reactor, /*allow_draining=*/true)) return reactor;
  if (RefuseMisrouted(context, reactor, request->session_id())) return reactor;
  RunUnary(reactor, [this, request, response]() -> absl::Status {
    absl::StatusOr<v1::SessionInfo> info = core_.sessions->Info(request->session_id());
    if (!info.ok()) return info.status();
    *response = std::move(*info);
    return absl::OkStatus();
  });
  return reactor;
}

grpc::ServerUnaryReactor* SinkServeService::ListSessions(grpc::CallbackServerContext* context,
                                                         const v1::ListSessionsRequest* request,
                                                         v1::ListSessionsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (RefuseUnlessServing(reactor, /*allow_draining=*/true)) return reactor;
  RunUnary(reactor, [this, request, response]() -> absl::Status {
    absl::StatusOr<v1::ListSessionsResponse> page = core_.sessions->List(*request);
    if (!page.ok()) return page.status();
    *response = std::move(*page);
    return absl::OkStatus();
  });
  return reactor;
}

grpc::ServerUnaryReactor* SinkServeService::DeleteSession(grpc::CallbackServerContext* context,
                                                          const v1::DeleteSessionRequest* request,
                                                          v1::DeleteSessionResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (RefuseUnlessServing(reactor, /*allow_draining=*/false)) return reactor;
  if (RefuseMisrouted(context, reactor, request->session_id())) return reactor;
  RunOwned(reactor, request->session_id(), [this, request]() -> absl::Status {
    return core_.sessions->Delete(request->session_id());
  });
  return reactor;
}

}  // namespace sinkserve::service
