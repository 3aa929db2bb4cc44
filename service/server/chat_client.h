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

class ChatClient {
 public:
  // Opens a Chat stream and its session; `deadline` bounds the whole stream
  // (absl::InfiniteDuration() for none). Errors carry the server's status.
  static absl::StatusOr<std::unique_ptr<ChatClient>> Open(
      const std::shared_ptr<grpc::Channel>& channel, const v1::OpenSession& open,
      absl::Duration deadline = absl::InfiniteDuration());

  const v1::SessionOpened& opened() const { return opened_; }

  // Sends one turn and reads until its TurnEnd; `on_delta` sees each delta as
  // it arrives.
  absl::StatusOr<ClientTurnResult> Turn(
      const v1::UserTurn& turn,
      const std::function<void(const v1::TokenDelta&)>& on_delta = nullptr);

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

// "INVALID_ARGUMENT: message" for people.
std::string DescribeStatus(const absl::Status& status);

}  // namespace sinkserve::service

#endif  // SINKSERVE_SERVICE_SERVER_CHAT_CLIENT_H_
