// A blocking client of one Chat stream, for `sinkserve chat` and
// `sinkserve bench load` (and C++ tests): open a session, run turns while
// the tokens stream in, close.
#ifndef SINKSERVE_SERVICE_SERVER_CHAT_CLIENT_H_
#define SINKSERVE_SERVICE_SERVER_CHAT_CLIENT_H_

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "sinkserve/v1/sinkserve.grpc.pb.h"

namespace sinkserve::service {

struct ClientTurnResult {
  std::string text;
  std::vector<int32_t> token_ids;
  v1::TurnEnd end;
  // Seen by the client: send -> first delta with tokens, and the gaps between
  // later token deltas (per token), in seconds.
  double time_to_first_token = 0;
  std::vector<double> inter_token;
};

// The request metadata that carries the session id, for load balancers that
// route by it (deploy/nginx); the server checks it against the request.
inline constexpr char kSessionIdHeader[] = "x-session-id";

class ChatClient {
 public:
  // Opens a Chat stream and its session (sending the session id as
  // x-session-id metadata); `deadline` bounds the whole stream
  // (absl::InfiniteDuration() for none). Errors carry the server's status.
  static absl::StatusOr<std::unique_ptr<ChatClient>> Open(
      const std::shared_ptr<grpc::Channel>& channel, const v1::OpenSession& open,
      absl::Duration deadline = absl::InfiniteDuration());

  const v1::SessionOpened& opened() const { return opened_; }

  // Sends one turn and reads until its TurnEnd; `on_delta` sees each delta as
  // it arrives. A TurnError for it is returned as its status.
  absl::StatusOr<ClientTurnResult> Turn(
      const v1::UserTurn& turn,
      const std::function<void(const v1::TokenDelta&)>& on_delta = nullptr);

  // Unpins a pinned turn (UnpinTurn) and waits for the answer: the server's
  // Unpinned, or its TurnError (NOT_FOUND for an unknown turn id) as status.
  absl::StatusOr<v1::Unpinned> Unpin(const std::string& turn_id);

  // Asks the server to stop the running turn (it then ends with
  // STOP_REASON_CANCELLED). Thread-safe against a Turn() running on another
  // thread; false when no turn runs or the stream is broken.
  bool CancelTurn();

  // Half-closes and waits for the server's final status.
  absl::Status Close();

 private:
  ChatClient() = default;
  // The stream broke: the server's status.
  absl::Status Broken();

  grpc::ClientContext context_;
  std::unique_ptr<v1::SinkServe::Stub> stub_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::ChatRequest, v1::ChatResponse>> stream_;
  v1::SessionOpened opened_;
  bool closed_ = false;
  // Serializes writes: Turn's and CancelTurn's (one write at a time).
  std::mutex write_mu_;
  bool in_turn_ = false;  // guarded by write_mu_
};

struct RetryOptions {
  // Tries in all (the first included). Default: 6.
  int max_attempts = 6;
  // Wait before the first retry, doubled after each up to max_backoff, with
  // up to 50% random jitter so that clients cut off together do not return
  // together. Default: 100 ms, 2 s.
  absl::Duration initial_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(2);
};

// Whether a failed attempt at a turn may be retried with the same turn_id:
// UNAVAILABLE (server draining or unreachable, connection or stream broken)
// and a session still attached to the previous, broken stream (the server
// releases it as soon as it notices).
bool RetryableTurnError(const absl::Status& status);

// One turn, exactly once across reconnects: opens a stream (`open`), sends
// `turn` and reads its TurnEnd; on a retryable error it waits, reconnects and
// sends the same turn again. `turn.turn_id` must be set: a turn that did
// complete before the break is then replayed by the server instead of run
// twice. `on_retry` (may be null) hears each retry's cause; `on_delta` sees
// the deltas of every attempt (a retry starts the reply over). Returns the
// result of the attempt that got a TurnEnd, or the last error.
absl::StatusOr<ClientTurnResult> TurnWithRetries(
    const std::shared_ptr<grpc::Channel>& channel, const v1::OpenSession& open,
    const v1::UserTurn& turn, const RetryOptions& retry, absl::Duration deadline,
    const std::function<void(const v1::TokenDelta&)>& on_delta,
    const std::function<void(int attempt, const absl::Status&)>& on_retry,
    const std::function<void(const v1::SessionOpened&)>& on_opened = nullptr);

// A random turn id (32 hex digits).
std::string NewTurnId();

// "INVALID_ARGUMENT: message" for people.
std::string DescribeStatus(const absl::Status& status);

}  // namespace sinkserve::service

#endif  // SINKSERVE_SERVICE_SERVER_CHAT_CLIENT_H_
