#include "service/server/chat_stream.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/sequence.h"
#include "service/server/log.h"
#include "service/server/status_util.h"

namespace sinkserve::service {
namespace {

const grpc::Status& ShuttingDown() {
  static const grpc::Status* status =
      new grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down");
  return *status;
}

bool Parse(const grpc::ByteBuffer& buffer, v1::ChatRequest* request) {
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) return false;
  std::string bytes;
  for (const grpc::Slice& slice : slices) {
    bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return request->ParseFromString(bytes);
}

}  // namespace

ChatStream* ChatStream::Start(SinkServeService* service, std::optional<std::string> routing_id,
                              security::Caller caller, std::string peer) {
  std::shared_ptr<ChatStream> stream(
      new ChatStream(service, std::move(routing_id), std::move(caller), std::move(peer)));
  std::lock_guard<std::mutex> lock(stream->mu_);
  stream->self_ = stream;
  if (Metrics* m = service->metrics()) m->IncActiveStreams();
  absl::Status quota = absl::OkStatus();
  if (security::TenantQuotas* quotas = service->security().quotas; quotas != nullptr) {
    quota = quotas->AcquireStream(stream->caller_.tenant);
    stream->counted_stream_ = quota.ok();
    if (!quota.ok() && service->metrics() != nullptr) {
      service->metrics()->IncQuotaRefusals("streams");
    }
  }
  if (!service->serving()) {
    stream->FinishLocked(
        service->draining()
            ? ShuttingDown()
            : grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is still loading its model"));
  } else if (!quota.ok()) {
    stream->FinishLocked(ToGrpcStatus(quota));
  } else {
    stream->StartRead(&stream->read_buffer_);
  }
  return stream.get();
}

bool ChatStream::HasRoom() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(queue_.size()) < service_->core().limits.stream_buffer;
}

bool ChatStream::CancelRequested() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cancel_turn_ || cancelled_ || done_ || closing_;
}

void ChatStream::Send(v1::ChatResponse response) {
  std::lock_guard<std::mutex> lock(mu_);
  if (closing_ || cancelled_ || done_) return;
  queue_.push_back(std::move(response));
  WriteLocked();
}

void ChatStream::TurnEnded(const absl::Status& status, v1::ChatResponse* turn_end) {
  std::optional<WaitingTurn> next;
  if (security::TenantQuotas* quotas = service_->security().quotas;
      quotas != nullptr && turn_end != nullptr && turn_end->has_turn_end() &&
      !turn_end->turn_end().replayed()) {
    quotas->AddTokens(caller_.tenant, turn_end->turn_end().usage().generated_tokens(), absl::Now());
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    turn_active_ = false;
    cancel_turn_ = false;
    if (turn_end != nullptr && !closing_ && !cancelled_ && !done_) {
      queue_.push_back(std::move(*turn_end));
      WriteLocked();
    }
    if (!status.ok()) {
      // Waiting turns were sent after this one and may depend on it: they
      // are dropped with the stream (FinishLocked).
      FinishLocked(ToGrpcStatus(status));
    } else if (drain_) {
      FinishLocked(ShuttingDown());
    } else if (next = NextTurnLocked(); next.has_value()) {
      // The stream stays attached: the next turn is already running.
    } else if (reads_done_) {
      FinishLocked(grpc::Status::OK);
    }
    MaybeDetachLocked();
  }
  if (next.has_value()) PostTurn(*std::move(next));
}

std::optional<ChatStream::WaitingTurn> ChatStream::NextTurnLocked() {
  if (waiting_.empty() || closing_ || cancelled_ || done_ || turn_active_) return std::nullopt;
  WaitingTurn next = std::move(waiting_.front());
  waiting_.pop_front();
  turn_active_ = true;
  cancel_turn_ = false;
  return next;
}

void ChatStream::PostTurn(WaitingTurn turn) {
  service_->core().scheduler->Post([self = shared_from_this(), turn = std::move(turn)] {
    if (turn.unpin.has_value()) {
      self->DoUnpin(*turn.unpin);
    } else {
      self->DoTurn(turn.turn, turn.received);
    }
  });
}

void ChatStream::RefuseTurnLocked(const std::string& turn_id, grpc::StatusCode code,
                                  std::string message) {
  service_->CountError(grpc::Status(code, message));
  if (closing_ || cancelled_ || done_) return;
  v1::ChatResponse response;
  v1::TurnError* error = response.mutable_turn_error();
  error->set_code(static_cast<int32_t>(code));
  error->set_message(std::move(message));
  error->set_turn_id(turn_id);
  queue_.push_back(std::move(response));
  WriteLocked();
}

void ChatStream::RefuseTurn(const std::string& turn_id, const absl::Status& status) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    const grpc::Status grpc_status = ToGrpcStatus(status);
    RefuseTurnLocked(turn_id, grpc_status.error_code(), grpc_status.error_message());
  }
  TurnEnded(absl::OkStatus(), nullptr);
}

void ChatStream::EnqueueLocked(std::unique_lock<std::mutex>& lock, WaitingTurn turn) {
  StartRead(&read_buffer_);
  if (turn_active_) {
    // Pipelined: it runs after the turns before it. Bounded, so that a
    // client cannot queue unbounded work (and memory) on one stream.
    const int limit = service_->core().limits.max_waiting_turns;
    if (static_cast<int>(waiting_.size()) >= limit) {
      RefuseTurnLocked(turn.unpin ? turn.unpin->turn_id() : turn.turn.turn_id(),
                       grpc::StatusCode::RESOURCE_EXHAUSTED,
                       absl::StrCat("turn refused: ", limit,
                                    " turns already wait on this stream behind the "
                                    "running one; send it again after a TurnEnd"));
    } else {
      waiting_.push_back(std::move(turn));
    }
    return;
  }
  turn_active_ = true;
  cancel_turn_ = false;
  lock.unlock();
  PostTurn(std::move(turn));
}

void ChatStream::Drain() {
  std::lock_guard<std::mutex> lock(mu_);
  drain_ = true;
  if (!turn_active_ && !opening_) FinishLocked(ShuttingDown());
}

void ChatStream::End(const grpc::Status& status) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    FinishLocked(status);
  }
  if (Scheduler* scheduler = service_->core().scheduler) scheduler->Wake();
}

void ChatStream::Abort(const std::string& session_id, const grpc::Status& status) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (session_id_ != session_id) return;
    FinishLocked(status);
  }
  // A turn paused on a full output buffer ends at the next step: run one.
  service_->core().scheduler->Wake();
}

void ChatStream::OnReadDone(bool ok) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!ok) {
    reads_done_ = true;
    if (!turn_active_ && !opening_) FinishLocked(grpc::Status::OK);
    return;
  }
  if (closing_) return;
  const ServingCore& core = service_->core();
  v1::ChatRequest request;
  if (!Parse(read_buffer_, &request)) {
    FinishLocked(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                              "not a valid sinkserve.v1.ChatRequest (strings must be UTF-8)"));
    return;
  }
  switch (request.kind_case()) {
    case v1::ChatRequest::kOpen: {
      if (opened_ || opening_) {
        FinishLocked(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                  "a session is already open on this stream"));
        return;
      }
      if (drain_ || service_->draining()) {
        FinishLocked(ShuttingDown());
        return;
      }
      if (routing_id_.has_value() && *routing_id_ != request.open().session_id()) {
        // The load balancer routed this stream by the header: serving
        // another session here would put it on the wrong replica.
        FinishLocked(grpc::Status(
            grpc::StatusCode::INVALID_ARGUMENT,
            absl::StrCat("the x-session-id header names session '", *routing_id_,
                         "' but OpenSession names '", request.open().session_id(),
                         "'; send the session id being opened")));
        return;
      }
      if (absl::Status s = security::ValidateClientSessionId(request.open().session_id());
          !s.ok()) {
        FinishLocked(ToGrpcStatus(s));
        return;
      }
      opening_ = true;
      v1::OpenSession open = std::move(*request.mutable_open());
      plain_id_ = open.session_id();
      open.set_session_id(security::ScopedId(caller_.tenant, plain_id_));
      lock.unlock();
      // This server must own the session first (with a shared store that
      // may take a handoff); the next read starts once it is attached.
      const std::string id = open.session_id();
      core.ownership->Claim(
          id, [self = shared_from_this(), open = std::move(open)](
                  const absl::StatusOr<memory::Acquired>& owned) mutable {
            self->service_->core().scheduler->Post(
                [self, open = std::move(open), owned] { self->DoOpen(open, owned); });
          });
      return;
    }
    case v1::ChatRequest::kTurn: {
      if (!opened_) {
        FinishLocked(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                  "open a session before sending a turn"));
        return;
      }
      if (drain_ || service_->draining()) {
        FinishLocked(ShuttingDown());
        return;
      }
      EnqueueLocked(lock, WaitingTurn{std::move(*request.mutable_turn()),
                                      std::chrono::steady_clock::now(), std::nullopt});
      return;
    }
    case v1::ChatRequest::kUnpin: {
      if (!opened_) {
        FinishLocked(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                  "open a session before unpinning a turn"));
        return;
      }
      if (drain_ || service_->draining()) {
        FinishLocked(ShuttingDown());
        return;
      }
      EnqueueLocked(lock, WaitingTurn{v1::UserTurn(), std::chrono::steady_clock::now(),
                                      std::move(*request.mutable_unpin())});
      return;
    }
    case v1::ChatRequest::kCancel:
      if (turn_active_) cancel_turn_ = true;
      StartRead(&read_buffer_);
      lock.unlock();
      core.scheduler->Wake();
      return;
    case v1::ChatRequest::KIND_NOT_SET:
      FinishLocked(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                "empty request: set open, turn, cancel or unpin"));
      return;
  }
}

void ChatStream::DoOpen(const v1::OpenSession& open,
                        const absl::StatusOr<memory::Acquired>& owned) {
  const ServingCore& core = service_->core();
  absl::StatusOr<AttachResult> attached = absl::UnknownError("unclaimed");
  if (owned.ok()) {
    // It moved here from another server: a copy in memory is stale.
    if (owned->cause != memory::AcquireCause::kHeld) core.sessions->Evict(open.session_id());
    attached = core.sessions->Attach(open.session_id(), open.create_if_missing(), open.config());
  } else {
    attached = owned.status();
  }
  if (attached.ok()) {
    if (absl::Status fits = CheckFreshSessionFits(*attached->session); !fits.ok()) {
      // Refused before any turn could fail on it; a session this open just
      // created is not left behind.
      core.sessions->Detach(open.session_id());
      if (attached->created) {
        if (absl::Status s = core.sessions->Delete(open.session_id()); !s.ok()) {
          ServerLog("deleting refused session ", open.session_id(), " failed: ", s.ToString());
        }
      }
      attached = fits;
    }
  }
  // Attached, the session holds the lease while in memory.
  core.ownership->Unclaim(open.session_id());
  v1::ChatResponse response;
  if (attached.ok()) {
    if (attached->created) {
      security::AuditEvent event;
      event.action = "session.create";
      event.tenant = caller_.tenant;
      event.credential = caller_.credential;
      event.session = plain_id_;
      event.peer = peer_;
      event.result = "OK";
      service_->Audit(nullptr, std::move(event));
    }
    v1::SessionOpened* opened = response.mutable_opened();
    *opened->mutable_session() = core.sessions->InfoOf(*attached->session);
    opened->mutable_session()->set_session_id(plain_id_);
    opened->mutable_session()->set_tenant(caller_.tenant);
    opened->set_restored(attached->restored);
    for (const std::string& w : attached->warnings) opened->add_warnings(w);
  }
  std::lock_guard<std::mutex> lock(mu_);
  opening_ = false;
  if (!attached.ok()) {
    FinishLocked(ToGrpcStatus(security::Unscoped(attached.status(), open.session_id(), plain_id_)));
    return;
  }
  opened_ = true;
  session_id_ = open.session_id();
  session_ = attached->session;
  if (done_ || closing_) {
    MaybeDetachLocked();
    return;
  }
  queue_.push_back(std::move(response));
  WriteLocked();
  if (drain_) {
    FinishLocked(ShuttingDown());
  } else {
    StartRead(&read_buffer_);
  }
}

absl::Status ChatStream::CheckFreshSessionFits(const engine::Session& session) const {
  const engine::Sequence& seq = session.sequence();
  // The system prompt is only ever fed with the first turn.
  if (seq.cache().tokens_seen() > 0 || !seq.pending().empty()) return absl::OkStatus();
  const ServingCore& core = service_->core();
  absl::StatusOr<ChatTemplate> chat_template = core.sessions->TemplateOf(session);
  if (!chat_template.ok()) return chat_template.status();
  return CheckSystemPromptFits(*core.encoder, *chat_template, session.config(), core.limits.turn);
}

void ChatStream::DoTurn(const v1::UserTurn& request,
                        std::chrono::steady_clock::time_point received) {
  const ServingCore& core = service_->core();
  if (!request.turn_id().empty() && session_->last_turn().turn_id == request.turn_id()) {
    ReplayTurn(request);
    return;
  }
  if (security::TenantQuotas* quotas = service_->security().quotas; quotas != nullptr) {
    if (absl::Status s = quotas->AdmitTurn(caller_.tenant, absl::Now()); !s.ok()) {
      if (Metrics* m = service_->metrics()) m->IncQuotaRefusals("tokens");
      RefuseTurn(request.turn_id(), s);
      return;
    }
  }
  ChatTurnContext context;
  context.model = core.model;
  context.encoder = core.encoder;
  context.sessions = core.sessions;
  context.metrics = core.metrics;
  context.limits = core.limits.turn;
  absl::StatusOr<std::unique_ptr<ChatTurn>> turn =
      ChatTurn::Create(context, session_, request, shared_from_this(), received);
  if (!turn.ok()) {
    if (IsTurnOnlyError(turn.status())) {
      RefuseTurn(request.turn_id(), turn.status());
    } else {
      TurnEnded(turn.status(), nullptr);
    }
    return;
  }
  core.scheduler->AddTurn(std::move(*turn));
}

void ChatStream::DoUnpin(const v1::UnpinTurn& unpin) {
  memory::KvCache& cache = session_->sequence().mutable_cache();
  int64_t cells = 0;
  for (const memory::Pin& p : cache.pins()) {
    if (p.label == unpin.turn_id()) cells = p.size();
  }
  absl::Status status = unpin.turn_id().empty()
                            ? absl::InvalidArgumentError("UnpinTurn needs the turn_id of a pinned turn")
                            : cache.Unpin(unpin.turn_id());
  if (!status.ok()) {
    RefuseTurn(unpin.turn_id(), status);
    return;
  }
  session_->Touch();
  if (Metrics* m = service_->metrics()) m->IncUnpins();
  auto response = std::make_shared<v1::ChatResponse>();
  v1::Unpinned* done = response->mutable_unpinned();
  done->set_turn_id(unpin.turn_id());
  done->set_cells(static_cast<uint32_t>(cells));
  done->set_pinned_cells(static_cast<uint32_t>(cache.pinned()));
  // Acknowledged once durable, like a turn: a restart keeps it unpinned.
  AnswerWhenDurable(std::move(response), "the unpin is done but its checkpoint failed: ");
}

void ChatStream::AnswerWhenDurable(std::shared_ptr<v1::ChatResponse> response,
                                   std::string failure) {
  std::shared_ptr<ChatStream> self = shared_from_this();
  const std::string id = session_->id();
  service_->core().sessions->CheckpointTurn(
      session_, [self, id, response, failure = std::move(failure)](const absl::Status& s) {
        if (!s.ok()) {
          ServerLog("checkpoint of session ", id, " failed: ", s.ToString());
          self->TurnEnded(absl::UnavailableError(absl::StrCat(failure, s.message())), nullptr);
          return;
        }
        self->TurnEnded(absl::OkStatus(), response.get());
      });
}

void ChatStream::ReplayTurn(const v1::UserTurn& request) {
  const memory::CompletedTurn& last = session_->last_turn();
  if (!last.token_ids.empty() || !last.text.empty()) {
    v1::ChatResponse delta;
    v1::TokenDelta* d = delta.mutable_delta();
    d->set_text(last.text);
    d->mutable_token_ids()->Add(last.token_ids.begin(), last.token_ids.end());
    if (request.logprobs()) d->mutable_logprobs()->Add(last.logprobs.begin(), last.logprobs.end());
    Send(std::move(delta));
  }
  auto response = std::make_shared<v1::ChatResponse>();
  v1::TurnEnd* end = response->mutable_turn_end();
  end->set_stop_reason(static_cast<v1::StopReason>(last.stop_reason));
  end->mutable_usage()->set_prompt_tokens(static_cast<uint32_t>(last.prompt_tokens));
  end->mutable_usage()->set_generated_tokens(static_cast<uint32_t>(last.generated_tokens));
  end->mutable_usage()->set_cells_kept(static_cast<uint32_t>(last.cells_kept));
  end->mutable_usage()->set_cells_evicted(static_cast<uint64_t>(last.cells_evicted));
  end->set_replayed(true);
  end->set_turn_id(last.turn_id);
  if (Metrics* m = service_->metrics()) m->IncReplayedTurns();
  // The stored turn may have ended on this server a moment ago with its
  // checkpoint still being written (its client lost the stream before the
  // TurnEnd): acknowledge it only once that is durable too. A clean session
  // captures a barrier, which completes after every earlier checkpoint.
  AnswerWhenDurable(std::move(response), "the turn's stored result is not durable: ");
}

void ChatStream::OnWriteDone(bool ok) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) {
      // The client is gone: nothing more will reach it.
      cancelled_ = true;
      queue_.clear();
      if (!closing_) FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "write failed"));
    }
    WriteLocked();
    MaybeFinishLocked();
  }
  service_->core().scheduler->Wake();  // room in the queue, or a cancel
}

void ChatStream::OnCancel() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
    queue_.clear();
    if (!closing_) FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
  }
  if (service_->serving() || service_->draining()) service_->core().scheduler->Wake();
}

void ChatStream::OnDone() {
  std::shared_ptr<ChatStream> keep;
  {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;
    MaybeDetachLocked();
    keep = std::move(self_);
  }
  service_->Unregister(this);
  if (Metrics* m = service_->metrics()) m->DecActiveStreams();
  if (counted_stream_) service_->security().quotas->ReleaseStream(caller_.tenant);
  // `keep` may be the last owner: this object ends with this function.
}

void ChatStream::WriteLocked() {
  if (writing_ || queue_.empty() || done_ || finished_) return;
  writing_ = true;
  const std::string bytes = queue_.front().SerializeAsString();
  queue_.pop_front();
  grpc::Slice slice(bytes);
  write_buffer_ = grpc::ByteBuffer(&slice, 1);
  StartWrite(&write_buffer_);
}

void ChatStream::FinishLocked(const grpc::Status& status) {
  if (closing_) return;
  closing_ = true;
  waiting_.clear();  // never started; a client resends them (same turn_id)
  finish_status_ = status;
  if (!session_id_.empty() && session_id_ != plain_id_ &&
      status.error_message().find(session_id_) != std::string::npos) {
    finish_status_ =
        ToGrpcStatus(security::Unscoped(FromGrpcStatus(status), session_id_, plain_id_));
  }
  if (turn_active_) cancel_turn_ = true;
  if (!status.ok()) service_->CountError(status);
  MaybeDetachLocked();
  MaybeFinishLocked();
}

void ChatStream::MaybeFinishLocked() {
  if (!closing_ || finished_ || writing_ || !queue_.empty()) return;
  finished_ = true;
  Finish(finish_status_);
}

void ChatStream::MaybeDetachLocked() {
  // As soon as the stream is closing, not when gRPC reports it done: the
  // Detach task is then queued on the scheduler before the client can see
  // the stream end, so a client that re-attaches right away finds the
  // session free (tasks run in order).
  if (!(done_ || closing_) || !opened_ || turn_active_ || detached_) return;
  detached_ = true;
  SessionManager* sessions = service_->core().sessions;
  service_->core().scheduler->Post([sessions, id = session_id_] { sessions->Detach(id); });
}

}  // namespace sinkserve::service
