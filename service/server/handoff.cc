#include "service/server/handoff.h"

#include <chrono>
#include <future>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "service/server/log.h"

namespace sinkserve::service {
namespace {

// How often a pending handoff looks at its session again.
constexpr absl::Duration kProbeEvery = absl::Milliseconds(5);

}  // namespace

HandoffService::HandoffService(SinkServeService* chat) : chat_(chat) {
  thread_ = std::thread([this] { Loop(); });
}

HandoffService::~HandoffService() { Stop(); }

void HandoffService::Enable(std::string cookie, absl::Duration budget) {
  std::lock_guard<std::mutex> lock(mu_);
  cookie_ = std::move(cookie);
  budget_ = budget;
  enabled_ = true;
}

void HandoffService::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

grpc::ServerUnaryReactor* HandoffService::HandOff(grpc::CallbackServerContext* context,
                                                  const v1::HandOffRequest* request,
                                                  v1::HandOffResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  std::unique_lock<std::mutex> lock(mu_);
  if (!enabled_ || request->lease_cookie() != cookie_) {
    // Another process at this address (restarted) or one not serving yet:
    // whoever held that lease is gone.
    reactor->Finish(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                 "this process does not hold that lease"));
    return reactor;
  }
  SessionOwnership* ownership = chat_->core().ownership;
  if (stop_ || !ownership->BeginHandoff(request->session_id())) {
    reactor->Finish(grpc::Status(grpc::StatusCode::ABORTED,
                                 stop_ ? "shutting down: the lease is released at the end"
                                       : "a handoff of this session is under way"));
    return reactor;
  }
  response->set_released(ownership->Owns(request->session_id()));
  incoming_.push_back(
      Pending{request->session_id(), reactor, response, absl::Now() + budget_, false});
  lock.unlock();
  cv_.notify_one();
  return reactor;
}

bool HandoffService::Probe(Pending& p) {
  const ServingCore& core = chat_->core();
  std::promise<Surrender> promise;
  std::future<Surrender> answer = promise.get_future();
  core.scheduler->Post(
      [&promise, sessions = core.sessions, id = p.id] { promise.set_value(sessions->TrySurrender(id)); });
  const Surrender where = answer.get();
  if (where == Surrender::kAttached && !p.ended_streams) {
    p.ended_streams = true;
    chat_->EndStreamsOf(p.id, grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                           absl::StrCat("session ", p.id,
                                                        " moved to another server; retry")));
  }
  return where == Surrender::kGone;
}

void HandoffService::Answer(Pending& p, const grpc::Status& status) {
  chat_->CountError(status);
  p.reactor->Finish(status);
}

void HandoffService::Loop() {
  std::vector<Pending> active;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (active.empty()) {
        cv_.wait(lock, [this] { return stop_ || !incoming_.empty(); });
      } else {
        cv_.wait_for(lock, absl::ToChronoMicroseconds(kProbeEvery),
                     [this] { return stop_ || !incoming_.empty(); });
      }
      while (!incoming_.empty()) {
        active.push_back(std::move(incoming_.front()));
        incoming_.pop_front();
      }
      if (stop_) break;
    }
    for (auto it = active.begin(); it != active.end();) {
      SessionOwnership* ownership = chat_->core().ownership;
      if (Probe(*it)) {
        absl::Status released = ownership->EndHandoff(it->id, /*release=*/true);
        if (!released.ok()) {
          ServerLog("handoff of session ", it->id, ": ", released.ToString());
          Answer(*it, grpc::Status(grpc::StatusCode::ABORTED, std::string(released.message())));
        } else {
          ServerLog("handed off session ", it->id);
          Answer(*it, grpc::Status::OK);
        }
        it = active.erase(it);
      } else if (absl::Now() >= it->deadline) {
        ownership->EndHandoff(it->id, /*release=*/false).IgnoreError();
        ServerLog("handoff of session ", it->id, " timed out: its lease stays here");
        Answer(*it, grpc::Status(grpc::StatusCode::ABORTED,
                                 "the session could not leave in time (its last checkpoint "
                                 "is still being written)"));
        it = active.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (Pending& p : active) {
    chat_->core().ownership->EndHandoff(p.id, /*release=*/false).IgnoreError();
    Answer(p, grpc::Status(grpc::StatusCode::ABORTED, "shutting down"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (Pending& p : incoming_) {
    chat_->core().ownership->EndHandoff(p.id, /*release=*/false).IgnoreError();
    Answer(p, grpc::Status(grpc::StatusCode::ABORTED, "shutting down"));
  }
  incoming_.clear();
}

memory::HandoffAnswer HandoffClient::Ask(const std::string& owner_address,
                                         const std::string& owner_cookie, const std::string& id,
                                         absl::Duration timeout) {
  std::shared_ptr<grpc::Channel> channel;
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::shared_ptr<grpc::Channel>& slot = channels_[owner_address];
    if (slot == nullptr) {
      slot = grpc::CreateCustomChannel(owner_address, credentials_, args_);
    }
    channel = slot;
  }
  std::unique_ptr<v1::Replicas::Stub> stub = v1::Replicas::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  v1::HandOffRequest request;
  request.set_session_id(id);
  request.set_lease_cookie(owner_cookie);
  v1::HandOffResponse response;
  const grpc::Status status = stub->HandOff(&context, request, &response);
  memory::HandoffAnswer answer = memory::HandoffAnswer::kNoAnswer;
  switch (status.error_code()) {
    case grpc::StatusCode::OK:
      answer = memory::HandoffAnswer::kReleased;
      break;
    case grpc::StatusCode::FAILED_PRECONDITION:  // another process there
    case grpc::StatusCode::UNAVAILABLE:          // nothing listens there
      answer = memory::HandoffAnswer::kOwnerGone;
      break;
    default:  // DEADLINE_EXCEEDED (paused, partitioned), ABORTED (busy)
      break;
  }
  if (answer != memory::HandoffAnswer::kReleased) {
    ServerLog("asked ", owner_address, " to hand off session ", id, ": ",
              status.error_message().empty() ? std::to_string(status.error_code())
                                             : status.error_message());
  }
  return answer;
}

memory::HandoffFn HandoffClient::AsFn() {
  return [this](const std::string& address, const std::string& cookie, const std::string& id,
                absl::Duration timeout) { return Ask(address, cookie, id, timeout); };
}

}  // namespace sinkserve::service
