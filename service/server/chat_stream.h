// ChatStream: the reactor of one Chat call (see route_guide_callback_server.cc
// in gRPC's examples: each streaming RPC is a small reactor owning its state).
//
// It reads requests one at a time: `open` attaches the session (on the
// scheduler thread), `turn` hands a ChatTurn to the scheduler and keeps
// reading so that `cancel` can arrive. Responses go through a bounded queue
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
  static ChatStream* Start(SinkServeService* service);

  // TurnOutput (scheduler thread).
  bool HasRoom() const override;
  bool CancelRequested() const override;
  void Send(v1::ChatResponse response) override;
  void TurnEnded(const absl::Status& status, v1::ChatResponse* turn_end) override;

  // The server is draining: end the stream now if idle, else after its turn.
  void Drain();

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  explicit ChatStream(SinkServeService* service) : service_(service) {}

  // Scheduler thread.
  void DoOpen(const v1::OpenSession& open);
  void DoTurn(const v1::UserTurn& turn, std::chrono::steady_clock::time_point received);
  // A session that has not run a turn yet must have room for one (see
  // CheckSystemPromptFits).
  absl::Status CheckFreshSessionFits(const engine::Session& session) const;

  // Locked helpers (mu_ held).
  void WriteLocked();
  // No more responses after those queued; Finish(status) once they are out.
  void FinishLocked(const grpc::Status& status);
  void MaybeFinishLocked();
  void MaybeDetachLocked();

  SinkServeService* const service_;
  mutable std::mutex mu_;
  std::shared_ptr<ChatStream> self_;  // until OnDone
  grpc::ByteBuffer read_buffer_;      // the read in flight
  std::deque<v1::ChatResponse> queue_;
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
  std::string session_id_;
  engine::Session* session_ = nullptr;  // touched on the scheduler thread only
};

}  // namespace sinkserve::service

#endif  // SINKSERVE_SERVICE_SERVER_CHAT_STREAM_H_
