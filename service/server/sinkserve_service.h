// SinkServeService: the sinkserve.v1.SinkServe gRPC service on the callback
// API. Each Chat stream is a ChatStream reactor; the unary admin RPCs post
// their work to the scheduler thread (which owns the sessions) and finish
// from there.
//
// Life cycle: loading (every RPC is UNAVAILABLE) -> serving -> draining (new
// streams, opens, turns and creations are UNAVAILABLE; running turns finish,
// then their streams end with UNAVAILABLE, a retryable code).
#ifndef SINKSERVE_SERVICE_SERVER_SINKSERVE_SERVICE_H_
#define SINKSERVE_SERVICE_SERVER_SINKSERVE_SERVICE_H_

#include <atomic>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include "service/metrics.h"
#include "service/security/audit_log.h"
#include "service/security/authenticator.h"
#include "service/security/caller.h"
#include "service/security/tenant_limits.h"
#include "service/server/chat_turn.h"
#include "service/server/scheduler.h"
#include "service/server/serving_model.h"
#include "service/server/session_manager.h"
#include "service/server/session_ownership.h"
#include "sinkserve/v1/sinkserve.grpc.pb.h"

namespace sinkserve::service {

class ChatStream;

struct ServiceLimits {
  ChatTurnLimits turn;
  // Responses a stream may have queued for a slow reader before its turn
  // pauses. Default: 32.
  int stream_buffer = 32;
  // Turns that may wait on one stream behind its running turn (pipelining);
  // one more gets a TurnError (RESOURCE_EXHAUSTED) and the stream goes on.
  // Default: 4.
  int max_waiting_turns = 4;
};

// What the service runs on once the model has loaded. Pointers outlive the
// service's serving phase.
struct ServingCore {
  ServingModel* model = nullptr;
  const TurnEncoder* encoder = nullptr;  // of model->tokenizer
  SessionManager* sessions = nullptr;  // scheduler thread only
  Scheduler* scheduler = nullptr;
  SessionOwnership* ownership = nullptr;  // which sessions this server may serve
  Metrics* metrics = nullptr;  // may be null
  ServiceLimits limits;
};

// Who may call, and what they may use. Pointers outlive the service.
struct ServiceSecurity {
  const security::Authenticator* auth = nullptr;  // required
  security::AuditLog* audit = nullptr;            // optional
  security::TenantQuotas* quotas = nullptr;       // optional
};

// Chat is registered raw (bytes in, bytes out) so that ChatStream parses
// requests itself; the admin RPCs use the generated callback methods.
using SinkServeServiceBase =
    v1::SinkServe::WithRawCallbackMethod_Chat<v1::SinkServe::WithCallbackMethod_CreateSession<
        v1::SinkServe::WithCallbackMethod_GetSession<v1::SinkServe::WithCallbackMethod_ListSessions<
            v1::SinkServe::WithCallbackMethod_DeleteSession<v1::SinkServe::Service>>>>>;

class SinkServeService final : public SinkServeServiceBase {
 public:
  SinkServeService(Metrics* metrics, ServiceSecurity security)
      : metrics_(metrics), security_(security) {}

  // loading -> serving.
  void SetServing(const ServingCore& core);
  // serving -> draining; finishes idle streams with UNAVAILABLE.
  void StartDrain();
  bool serving() const { return state_.load() == kServing; }
  bool draining() const { return state_.load() == kDraining; }
  int open_streams() const;
  // Ends the stream attached to session `id`, if any, with `status`.
  void EndStreamsOf(const std::string& id, const grpc::Status& status);
  // Ends (UNAUTHENTICATED, audited) every stream whose API key was revoked
  // by the last reload or whose JWT has expired; returns how many.
  int EndRevokedStreams();

  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Chat(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* CreateSession(grpc::CallbackServerContext* context,
                                          const v1::CreateSessionRequest* request,
                                          v1::SessionInfo* response) override;
  grpc::ServerUnaryReactor* GetSession(grpc::CallbackServerContext* context,
                                       const v1::GetSessionRequest* request,
                                       v1::SessionInfo* response) override;
  grpc::ServerUnaryReactor* ListSessions(grpc::CallbackServerContext* context,
                                         const v1::ListSessionsRequest* request,
                                         v1::ListSessionsResponse* response) override;
  grpc::ServerUnaryReactor* DeleteSession(grpc::CallbackServerContext* context,
                                          const v1::DeleteSessionRequest* request,
                                          v1::DeleteSessionResponse* response) override;

  // For ChatStream.
  const ServingCore& core() const { return core_; }
  Metrics* metrics() const { return metrics_; }
  const ServiceSecurity& security() const { return security_; }
  void Unregister(ChatStream* stream);
  void CountError(const grpc::Status& status) const;
  // Writes an audit record (if there is an audit log), filling in the peer.
  void Audit(const grpc::ServerContextBase* context, security::AuditEvent event) const;

 private:
  enum State { kLoading, kServing, kDraining };

  // The caller of `context`, authenticated; nullopt (audited, counted) when
  // its credentials are missing or wrong, for the caller to finish with
  // Unauthenticated().
  std::optional<security::Caller> Authenticate(grpc::CallbackServerContext* context,
                                               const char* rpc) const;
  // The tenant a Get/Delete/List names: the caller's own for "" or its own
  // name; another only for an admin (nullopt for anyone else).
  static std::optional<std::string> TargetTenant(const security::Caller& caller,
                                                 const std::string& requested);
  // The session a Create/Get/Delete call addresses.
  struct SessionTarget {
    security::Caller caller;
    std::string plain;   // the id as the client names it
    std::string tenant;  // its owner: the caller's tenant, or another an admin named
    std::string scoped;  // the store's key, security::ScopedId(tenant, plain)
  };
  // Admits a unary call on session `session_id` of `tenant` ("" = the
  // caller's): authenticated, this server serving (or, with
  // `allow_draining`, draining), routed by that id, the id valid, and the
  // tenant one the caller may name (else NOT_FOUND, as for a session that
  // does not exist). nullopt: `reactor` is finished, the refusal counted.
  std::optional<SessionTarget> Admit(grpc::CallbackServerContext* context,
                                     grpc::ServerUnaryReactor* reactor, const char* rpc,
                                     const std::string& session_id, const std::string& tenant,
                                     bool allow_draining);
  // Finishes `reactor` with `status` (counted) and returns it.
  grpc::ServerUnaryReactor* Refuse(grpc::ServerUnaryReactor* reactor,
                                   const grpc::Status& status) const;
  // Audits `action` by `caller` on session `session` of `owner` ("*" = all
  // tenants, "" = the caller's own) with `status`; an action on another
  // tenant's sessions is an admin's and counted as one.
  void AuditSession(const grpc::ServerContextBase* context, const security::Caller& caller,
                    const char* action, const std::string& owner, const std::string& session,
                    const absl::Status& status) const;
  // Finishes `reactor` with UNAVAILABLE unless serving (or, with
  // `allow_draining`, draining); true when it did.
  bool RefuseUnlessServing(grpc::ServerUnaryReactor* reactor, bool allow_draining);
  // Finishes `reactor` with INVALID_ARGUMENT when the call's x-session-id
  // metadata names another session than `session_id`; true when it did. A
  // call without the header passes (clients older than the header).
  bool RefuseMisrouted(grpc::CallbackServerContext* context, grpc::ServerUnaryReactor* reactor,
                       const std::string& session_id);
  // Runs `work` on the scheduler thread and finishes `reactor` with its status.
  void RunUnary(grpc::ServerUnaryReactor* reactor, std::function<absl::Status()> work);
  // RunUnary for work that writes session `id`: this server claims it first.
  void RunOwned(grpc::ServerUnaryReactor* reactor, const std::string& id,
                std::function<absl::Status()> work);

  std::atomic<int> state_{kLoading};
  ServingCore core_;  // set before state_ becomes kServing
  Metrics* metrics_;
  const ServiceSecurity security_;
  mutable std::mutex mu_;
  std::set<ChatStream*> streams_;  // guarded by mu_
};

}  // namespace sinkserve::service

#endif  // SINKSERVE_SERVICE_SERVER_SINKSERVE_SERVICE_H_
