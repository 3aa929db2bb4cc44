// ChatStream: the reactor of one Chat call (see route_guide_callback_server.cc
// in gRPC's examples: each streaming RPC is a small reactor owning its state).
//
// It reads requests one at a time: `open` attaches the session (on the
// scheduler thread), `turn` hands a ChatTurn to the scheduler and keeps
// reading so that `cancel` and further turns can arrive. Turns that arrive
// while one runs wait in order (pipelining, up to
// ServiceLimits::max_waiting_turns; one more gets a TurnError and the stream
// goes on); each starts when the previous one has ended. A turn whose
// turn_id is the session's last completed turn's is answered from the
// stored result instead of running (exactly-once retries). Responses go through a bounded queue
// with one write in flight; the scheduler pauses the turn while the queue is
// full. The reactor stays alive (shared ownership) until both gRPC is done
// with it and the scheduler has ended its turn; the session is detached only
// then, so no second stream can attach while a turn still runs on it.
#ifndef SINKSERVE_SERVICE_SERVER_CHAT_STREAM_H_
#define SINKSERVE_SERVICE_SERVER_CHAT_STREAM_H_

#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "grpcpp/grpcpp.h"
#include "service/server/chat_turn.h"
#include "service/server/sinkserve_service.h"
#include "sinkserve/v1/sinkserve.pb.h"

namespace sinkserve::service {

// Messages travel as raw bytes, parsed here: a request protobuf cannot parse
// (invalid UTF-8 in a string field, garbage) is INVALID_ARGUMENT, where gRPC's
// own parsing would end the stream without saying why.
class ChatStream : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>,
                   public TurnOutput,
                   public std::enable_shared_from_this<ChatStream> {
 public:
  // Creates the reactor (owning itself until OnDone) and starts reading, or
  // finishes at once with UNAVAILABLE when the service is not serving.
  // `routing_id`: the call's x-session-id metadata, if it had one; the open
  // must then name that session. `caller`: who opened the stream (its tenant
  // scopes the session id); `peer` for the audit log. A tenant over its
  // stream limit is refused with RESOURCE_EXHAUSTED.
  static ChatStream* Start(SinkServeService* service, std::optional<std::string> routing_id,
                           security::Caller caller, std::string peer);

  // TurnOutput (scheduler thread).
  bool HasRoom() const override;
  bool CancelRequested() const override;
  void Send(v1::ChatResponse response) override;
  void TurnEnded(const absl::Status& status, v1::ChatResponse* turn_end) override;

  // The server is draining: end the stream now if idle, else after its turn.
  void Drain();
  // Ends the stream with `status` (a running turn is cancelled).
  void End(const grpc::Status& status);
  const security::Caller& caller() const { return caller_; }
  const std::string& peer() const { return peer_; }
  // If the stream is attached to `session_id`: ends it with `status` (its
  // running turn is cancelled, the session detaches once the turn ended).
  void Abort(const std::string& session_id, const grpc::Status& status);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  // A turn, or an UnpinTurn: both run on the session in the order sent.
  struct WaitingTurn {
    v1::UserTurn turn;
    std::chrono::steady_clock::time_point received;
    std::optional<v1::UnpinTurn> unpin;
  };

  ChatStream(SinkServeService* service, std::optional<std::string> routing_id,
             security::Caller caller, std::string peer)
      : service_(service),
        routing_id_(std::move(routing_id)),
        caller_(std::move(caller)),
        peer_(std::move(peer)) {}

  // Scheduler thread.
  // `owned`: the outcome of claiming the session (SessionOwnership).
  void DoOpen(const v1::OpenSession& open, const absl::StatusOr<memory::Acquired>& owned);
  void DoTurn(const v1::UserTurn& turn, std::chrono::steady_clock::time_point received);
  // Unpins a turn's cells; answers Unpinned once that is durable, or a
  // TurnError NOT_FOUND.
  void DoUnpin(const v1::UnpinTurn& unpin);
  // Ends the running request with `response` once everything the session
  // checkpointed so far is durable; UNAVAILABLE, `failure` + why, if not.
  void AnswerWhenDurable(std::shared_ptr<v1::ChatResponse> response, std::string failure);
  // Answers a refused turn with a TurnError and lets the next one start.
  void RefuseTurn(const std::string& turn_id, const absl::Status& status);
  // Answers a turn that already completed (same turn_id) from the session's
  // stored result, once everything checkpointed so far is durable.
  void ReplayTurn(const v1::UserTurn& turn);
  // Hands `turn` to the scheduler; call without mu_ held (Post may run the
  // task inline once the scheduler has stopped).
  void PostTurn(WaitingTurn turn);
  // A session that has not run a turn yet must have room for one (see
  // CheckSystemPromptFits).
  absl::Status CheckFreshSessionFits(const engine::Session& session) const;

  // Locked helpers (mu_ held).
  // The next waiting turn, now marked running, if one may start.
  std::optional<WaitingTurn> NextTurnLocked();
  // Queues a TurnError for a refused turn; the stream goes on.
  void RefuseTurnLocked(const std::string& turn_id, grpc::StatusCode code, std::string message);
  // Queues a turn or unpin: runs it now if nothing runs, else waits (bounded).
  void EnqueueLocked(std::unique_lock<std::mutex>& lock, WaitingTurn turn);
  void WriteLocked();
  // No more responses after those queued; Finish(status) once they are out.
  void FinishLocked(const grpc::Status& status);
  void MaybeFinishLocked();
  void MaybeDetachLocked();

  SinkServeService* const service_;
  const std::optional<std::string> routing_id_;
  const security::Caller caller_;
  const std::string peer_;
  bool counted_stream_ = false;  // holds one of the tenant's streams
  mutable std::mutex mu_;
  std::shared_ptr<ChatStream> self_;  // until OnDone
  grpc::ByteBuffer read_buffer_;      // the read in flight
  std::deque<v1::ChatResponse> queue_;
  std::deque<WaitingTurn> waiting_;  // turns received while one runs, in order
  grpc::ByteBuffer write_buffer_;  // the write in flight
  bool writing_ = false;
  bool opening_ = false;
  bool opened_ = false;
  bool turn_active_ = false;
  bool cancel_turn_ = false;
  bool reads_done_ = false;  // the client half-closed
  bool drain_ = false;
  bool cancelled_ = false;  // OnCancel, or a write failed
  bool closing_ = false;    // FinishLocked called
  bool finished_ = false;   // Finish called
  bool done_ = false;       // OnDone called
  bool detached_ = false;
  grpc::Status finish_status_;
  std::string session_id_;              // the store's (scoped) id
  std::string plain_id_;                // the id the client named
  engine::Session* session_ = nullptr;  // touched on the scheduler thread only
};

}  // namespace sinkserve::service

#endif  // SINKSERVE_SERVICE_SERVER_CHAT_STREAM_H_
