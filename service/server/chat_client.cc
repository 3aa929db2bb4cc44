#include "service/server/chat_client.h"

#include <algorithm>
#include <random>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "service/server/status_util.h"

namespace sinkserve::service {
std::string DescribeStatus(const absl::Status& status) {
  return absl::StrCat(StatusCodeName(status.code()), ": ", status.message());
}

absl::StatusOr<std::unique_ptr<ChatClient>> ChatClient::Open(
    const std::shared_ptr<grpc::Channel>& channel, const v1::OpenSession& open,
    absl::Duration deadline) {
  auto client = std::unique_ptr<ChatClient>(new ChatClient());
  if (deadline != absl::InfiniteDuration()) {
    client->context_.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  }
  client->context_.AddMetadata(kSessionIdHeader, open.session_id());
  client->stub_ = v1::SinkServe::NewStub(channel);
  client->stream_ = client->stub_->Chat(&client->context_);
  v1::ChatRequest request;
  *request.mutable_open() = open;
  if (!client->stream_->Write(request)) return client->Broken();
  v1::ChatResponse response;
  if (!client->stream_->Read(&response)) return client->Broken();
  if (!response.has_opened()) {
    return absl::InternalError("the server did not answer open with SessionOpened");
  }
  client->opened_ = std::move(*response.mutable_opened());
  return client;
}

absl::StatusOr<ClientTurnResult> ChatClient::Turn(
    const v1::UserTurn& turn, const std::function<void(const v1::TokenDelta&)>& on_delta) {
  if (closed_) return absl::FailedPreconditionError("the stream is closed");
  v1::ChatRequest request;
  *request.mutable_turn() = turn;
  const auto sent = std::chrono::steady_clock::now();
  {
    std::lock_guard<std::mutex> lock(write_mu_);
    if (!stream_->Write(request)) return Broken();
    in_turn_ = true;
  }
  struct TurnOver {
    ChatClient* client;
    ~TurnOver() {
      std::lock_guard<std::mutex> lock(client->write_mu_);
      client->in_turn_ = false;
    }
  } turn_over{this};
  ClientTurnResult result;
  bool first = true;
  auto last = sent;
  v1::ChatResponse response;
  while (stream_->Read(&response)) {
    if (response.has_delta()) {
      const v1::TokenDelta& delta = response.delta();
      if (delta.token_ids_size() > 0) {
        const auto now = std::chrono::steady_clock::now();
        if (first) {
          result.time_to_first_token = std::chrono::duration<double>(now - sent).count();
          first = false;
        } else {
          const double gap = std::chrono::duration<double>(now - last).count();
          for (int i = 0; i < delta.token_ids_size(); ++i) {
            result.inter_token.push_back(gap / delta.token_ids_size());
          }
        }
        last = now;
      }
      result.text += delta.text();
      result.token_ids.insert(result.token_ids.end(), delta.token_ids().begin(),
                              delta.token_ids().end());
      if (on_delta) on_delta(delta);
    } else if (response.has_turn_end()) {
      result.end = std::move(*response.mutable_turn_end());
      return result;
    } else if (response.has_turn_error()) {
      // One turn at a time: the refused turn is this one.
      return absl::Status(static_cast<absl::StatusCode>(response.turn_error().code()),
                          response.turn_error().message());
    }
  }
  return Broken();
}

absl::StatusOr<v1::Unpinned> ChatClient::Unpin(const std::string& turn_id) {
  if (closed_) return absl::FailedPreconditionError("the stream is closed");
  v1::ChatRequest request;
  request.mutable_unpin()->set_turn_id(turn_id);
  {
    std::lock_guard<std::mutex> lock(write_mu_);
    if (!stream_->Write(request)) return Broken();
  }
  v1::ChatResponse response;
  while (stream_->Read(&response)) {
    if (response.has_unpinned()) return std::move(*response.mutable_unpinned());
    if (response.has_turn_error()) {
      return absl::Status(static_cast<absl::StatusCode>(response.turn_error().code()),
                          response.turn_error().message());
    }
  }
  return Broken();
}

bool ChatClient::CancelTurn() {
  std::lock_guard<std::mutex> lock(write_mu_);
  if (!in_turn_ || closed_) return false;
  v1::ChatRequest request;
  request.mutable_cancel();
  return stream_->Write(request);
}

absl::Status ChatClient::Close() {
  if (closed_) return absl::OkStatus();
  closed_ = true;
  stream_->WritesDone();
  v1::ChatResponse ignored;
  while (stream_->Read(&ignored)) {
  }
  return FromGrpcStatus(stream_->Finish());
}

bool RetryableTurnError(const absl::Status& status) {
  if (status.code() == absl::StatusCode::kUnavailable) return true;
  // SessionManager::Attach's words for a session held by another stream.
  return status.code() == absl::StatusCode::kFailedPrecondition &&
         absl::StrContains(status.message(), "is attached to another stream");
}

std::string NewTurnId() {
  std::random_device device;
  std::mt19937_64 rng((uint64_t{device()} << 32) ^ device());
  return absl::StrFormat("%016x%016x", rng(), rng());
}

absl::StatusOr<ClientTurnResult> TurnWithRetries(
    const std::shared_ptr<grpc::Channel>& channel, const v1::OpenSession& open,
    const v1::UserTurn& turn, const RetryOptions& retry, absl::Duration deadline,
    const std::function<void(const v1::TokenDelta&)>& on_delta,
    const std::function<void(int attempt, const absl::Status&)>& on_retry,
    const std::function<void(const v1::SessionOpened&)>& on_opened) {
  if (turn.turn_id().empty()) {
    return absl::InvalidArgumentError("a retried turn needs a turn_id (else it may run twice)");
  }
  std::mt19937_64 jitter(std::random_device{}());
  absl::Duration backoff = retry.initial_backoff;
  absl::Status last;
  for (int attempt = 1;; ++attempt) {
    absl::StatusOr<std::unique_ptr<ChatClient>> client = ChatClient::Open(channel, open, deadline);
    if (client.ok() && on_opened) on_opened((*client)->opened());
    absl::StatusOr<ClientTurnResult> result =
        client.ok() ? (*client)->Turn(turn, on_delta) : client.status();
    if (result.ok()) {
      // The turn is done (and durable); how the stream ends does not matter.
      (void)(*client)->Close();
      return result;
    }
    last = result.status();
    if (!RetryableTurnError(last) || attempt >= retry.max_attempts) return last;
    if (on_retry) on_retry(attempt, last);
    const double spread = std::uniform_real_distribution<double>(0.5, 1.0)(jitter);
    absl::SleepFor(backoff * spread);
    backoff = std::min(backoff * 2, retry.max_backoff);
  }
}

absl::Status ChatClient::Broken() {
  if (closed_) return absl::UnavailableError("the stream is closed");
  closed_ = true;
  absl::Status status = FromGrpcStatus(stream_->Finish());
  if (status.ok()) return absl::UnavailableError("the server ended the stream early");
  return status;
}

}  // namespace sinkserve::service
