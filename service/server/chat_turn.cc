#include "service/server/chat_turn.h"

#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "engine/sequence.h"
#include "memory/status_macros.h"
#include "service/chat_template.h"
#include "service/server/log.h"
#include "service/server/status_util.h"

namespace sinkserve::service {
namespace {

double Seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

v1::StopReason ToProto(engine::StopReason reason) {
  switch (reason) {
    case engine::StopReason::kEndOfText:
      return v1::STOP_REASON_EOS;
    case engine::StopReason::kStopString:
      return v1::STOP_REASON_STOP_STRING;
    case engine::StopReason::kCancelled:
      return v1::STOP_REASON_CANCELLED;
    case engine::StopReason::kMaxTokens:
      return v1::STOP_REASON_MAX_TOKENS;
    case engine::StopReason::kContextFull:
      return v1::STOP_REASON_CONTEXT_FULL;
  }
  return v1::STOP_REASON_UNSPECIFIED;
}

bool HasAnySetting(const v1::SamplingParams& p) {
  return p.has_temperature() || p.has_top_k() || p.has_top_p() || p.has_min_p() ||
         p.has_repeat_penalty() || p.has_presence_penalty() || p.has_seed();
}


constexpr char kTurnOnlyUrl[] = "type.sinkserve.dev/turn-only";

// Pins this turn's prompt cells: the system prompt's on the first turn of a
// session that pins it, the whole prompt of a turn that asks. On error
// nothing stays pinned.
absl::Status PinPrompt(const TurnEncoder& encoder, const ChatTemplate& chat_template,
                       const TurnContext& text_context, const v1::UserTurn& request,
                       absl::Span<const int32_t> prompt, const ChatTurnLimits& limits,
                       engine::Session* session, Metrics* metrics) {
  engine::Sequence& seq = session->sequence();
  const int64_t limit = PinLimitOf(session->config().policy, limits);
  int64_t system_cells = 0;
  if (text_context.first_turn && session->config().pin_system_prompt &&
      !text_context.system_prompt.empty()) {
    TurnContext system = text_context;
    system.system_only = true;
    SINKSERVE_ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                               encoder.Encode(FormatTurnPieces(chat_template, system)));
    // The cells the prompt really starts with: a token that merges across
    // the boundary with the user's text is not the system prompt's.
    while (system_cells < static_cast<int64_t>(std::min(ids.size(), prompt.size())) &&
           ids[system_cells] == prompt[system_cells]) {
      ++system_cells;
    }
    if (system_cells > 0) {
      if (absl::Status s = seq.PinNextTokens("", 0, system_cells, limit); !s.ok()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "the session's system prompt cannot be pinned: ", s.message()));
      }
    }
  }
  if (request.pin()) {
    absl::Status s;
    if (static_cast<int64_t>(prompt.size()) > system_cells) {
      s = seq.PinNextTokens(request.turn_id(), system_cells,
                            static_cast<int64_t>(prompt.size()) - system_cells, limit);
    }
    if (!s.ok()) {
      seq.mutable_cache().ClosePins();  // nothing arrived: drops the system pin too
      if (metrics != nullptr && s.code() == absl::StatusCode::kResourceExhausted) {
        metrics->IncPinRefusals();
      }
      return TurnOnlyError(s);
    }
    if (metrics != nullptr) metrics->IncPins("turn");
  }
  if (system_cells > 0 && metrics != nullptr) metrics->IncPins("system_prompt");
  return absl::OkStatus();
}

}  // namespace

absl::Status TurnOnlyError(absl::Status status) {
  status.SetPayload(kTurnOnlyUrl, absl::Cord("1"));
  return status;
}

bool IsTurnOnlyError(const absl::Status& status) {
  return !status.ok() && status.GetPayload(kTurnOnlyUrl).has_value();
}

int64_t PinLimitOf(const memory::PolicyConfig& policy, const ChatTurnLimits& limits) {
  int64_t limit = policy.PinLimit();
  switch (policy.kind) {
    case memory::PolicyKind::kWindow:
    case memory::PolicyKind::kStreaming:
    case memory::PolicyKind::kSirLlm:
      limit = std::min<int64_t>(limit, std::max(0, policy.window - limits.min_window));
      break;
    case memory::PolicyKind::kFull:
    case memory::PolicyKind::kRecompute:
      break;
  }
  return limit;
}

absl::StatusOr<int64_t> SystemPromptCells(const TurnEncoder& encoder,
                                          const ChatTemplate& chat_template,
                                          std::string_view system_prompt) {
  if (system_prompt.empty()) return 0;
  TurnContext system;
  system.first_turn = true;
  system.system_only = true;
  system.add_bos = encoder.tokenizer().vocab().add_bos;
  system.system_prompt = system_prompt;
  absl::StatusOr<std::vector<int32_t>> ids =
      encoder.Encode(FormatTurnPieces(chat_template, system));
  if (!ids.ok()) return absl::InvalidArgumentError(ids.status().message());
  return static_cast<int64_t>(ids->size());
}

absl::Status CheckSystemPromptFits(const TurnEncoder& encoder, const ChatTemplate& chat_template,
                                   const engine::SessionConfig& config,
                                   const ChatTurnLimits& limits) {
  const std::string_view system_prompt = config.system_prompt;
  if (system_prompt.empty()) return absl::OkStatus();
  TurnContext first;
  first.first_turn = true;
  first.add_bos = encoder.tokenizer().vocab().add_bos;
  first.system_prompt = system_prompt;
  // A user message (never empty) adds at least a token to this count, so at
  // the limit no turn fits.
  absl::StatusOr<std::vector<int32_t>> ids = encoder.Encode(FormatTurnPieces(chat_template, first));
  if (!ids.ok()) return absl::InvalidArgumentError(ids.status().message());
  if (static_cast<int64_t>(ids->size()) >= limits.max_prompt_tokens) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the system prompt takes ", ids->size(), " prompt tokens with its template markup; a turn "
        "may add at most ", limits.max_prompt_tokens, " (--max-prompt-tokens), which leaves no "
        "room for a user message"));
  }
  if (!config.pin_system_prompt) return absl::OkStatus();
  SINKSERVE_ASSIGN_OR_RETURN(const int64_t cells,
                             SystemPromptCells(encoder, chat_template, system_prompt));
  const memory::PolicyConfig& policy = config.policy;
  const int64_t limit = PinLimitOf(policy, limits);
  if (cells <= limit) return absl::OkStatus();
  std::string why;
  if (policy.max_pinned > 0 && policy.max_pinned == limit) {
    why = absl::StrCat("the policy pins at most ", policy.max_pinned, " (max_pinned_cells)");
  } else if (policy.kind == memory::PolicyKind::kWindow ||
             policy.kind == memory::PolicyKind::kStreaming ||
             policy.kind == memory::PolicyKind::kSirLlm) {
    why = absl::StrCat("its window of ", policy.window, " cells must keep at least ",
                       limits.min_window, " (serve --min-window), so at most ", limit,
                       " can be pinned");
  } else {
    why = absl::StrCat("at most ", limit, " can be pinned");
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "the pinned system prompt takes ", cells, " cells with its template markup, but policy ",
      policy.ToString(), " cannot pin that many: ", why,
      "; shorten the system prompt, give the policy a larger window, or set "
      "pin_system_prompt to false"));
}

ChatTurn::ChatTurn(const ChatTurnContext& context, engine::Session* session,
                   std::shared_ptr<TurnOutput> output)
    : context_(context), session_(session), output_(std::move(output)) {}

absl::StatusOr<std::unique_ptr<ChatTurn>> ChatTurn::Create(
    const ChatTurnContext& context, engine::Session* session, const v1::UserTurn& request,
    std::shared_ptr<TurnOutput> output, std::chrono::steady_clock::time_point received) {
  if (request.text().empty()) return absl::InvalidArgumentError("empty turn: no text");
  const ChatTurnLimits& limits = context.limits;
  if (request.max_tokens() > static_cast<uint32_t>(limits.max_tokens_limit)) {
    return absl::InvalidArgumentError(absl::StrCat("max_tokens ", request.max_tokens(),
                                                   " is over the server's limit of ",
                                                   limits.max_tokens_limit));
  }
  auto turn = std::unique_ptr<ChatTurn>(new ChatTurn(context, session, std::move(output)));
  turn->received_ = received;
  turn->want_logprobs_ = request.logprobs();
  turn->record_.turn_id = request.turn_id();

  const engine::Tokenizer& tokenizer = *context.model->tokenizer;
  const engine::Vocab& vocab = tokenizer.vocab();
  SINKSERVE_ASSIGN_OR_RETURN(ChatTemplate chat_template, context.sessions->TemplateOf(*session));
  engine::EncodeOptions special;
  special.parse_special = true;

  // End-of-reply texts: one token each ends the text like EOS; others are
  // matched as stop strings.
  engine::GeneratorOptions& options = turn->options_;
  for (const std::string& text : StopTexts(chat_template)) {
    absl::StatusOr<std::vector<int32_t>> ids = tokenizer.Encode(text, special);
    if (ids.ok() && ids->size() == 1) {
      options.end_of_text_ids.push_back((*ids)[0]);
    } else {
      options.stop_strings.push_back(text);
    }
  }
  for (const std::string& stop : request.stop()) {
    if (!stop.empty()) options.stop_strings.push_back(stop);
  }
  options.max_tokens = request.max_tokens() == 0 ? limits.default_max_tokens : request.max_tokens();
  options.prefill_chunk = session->sequence().max_step_tokens();
  options.stop_at_end_of_text = !request.ignore_eos();

  const engine::Sequence& seq = session->sequence();
  const bool first_turn = seq.cache().tokens_seen() == 0 && seq.pending().empty();
  bool reply_closed = false;  // the last reply ended with its end-of-turn token
  if (!seq.pending().empty()) {
    const int32_t last = seq.pending().back().token;
    reply_closed = last == vocab.eos_id || last == vocab.bos_id;
    for (int32_t id : options.end_of_text_ids) reply_closed |= last == id;
  }
  TurnContext text_context;
  text_context.user_text = request.text();
  text_context.first_turn = first_turn;
  text_context.after_assistant = !first_turn && !reply_closed;
  text_context.add_bos = vocab.add_bos;
  text_context.system_prompt = session->config().system_prompt;
  absl::StatusOr<std::vector<int32_t>> prompt =
      context.encoder->Encode(FormatTurnPieces(chat_template, text_context));
  if (!prompt.ok()) return absl::InvalidArgumentError(prompt.status().message());
  if (static_cast<int64_t>(prompt->size()) > limits.max_prompt_tokens) {
    return absl::ResourceExhaustedError(absl::StrCat("turn of ", prompt->size(),
                                                     " prompt tokens is over the limit of ",
                                                     limits.max_prompt_tokens));
  }
  if (request.pin() && request.turn_id().empty()) {
    return TurnOnlyError(absl::InvalidArgumentError(
        "a pinned turn needs a turn_id: UnpinTurn names the turn by it"));
  }

  engine::Sampler* sampler = &session->sampler();
  if (request.has_sampling() && HasAnySetting(request.sampling())) {
    if (request.sampling().has_seed()) {
      return absl::InvalidArgumentError("the seed is set when the session is created");
    }
    SINKSERVE_ASSIGN_OR_RETURN(engine::SamplerOptions sampling,
                               ApplySampling(session->config().sampling, request.sampling()));
    turn->override_sampler_ = std::make_unique<engine::Sampler>(sampling);
    SINKSERVE_RETURN_IF_ERROR(
        turn->override_sampler_->RestoreState(session->sampler().SaveState()));
    sampler = turn->override_sampler_.get();
  }

  ChatTurn* self = turn.get();
  // Ids go out with their text (on_ids), which a stop string can hold back
  // or drop; a token's log-probability must be taken when it is sampled, so
  // it waits in held_logprobs_ until its id is released.
  turn->callbacks_.on_token = [self](int32_t id) {
    if (self->want_logprobs_) {
      // The model's own log-probability, before sampling filters.
      self->held_logprobs_.push_back(
          static_cast<float>(-engine::Surprisal(self->session_->sequence().last_logits(), id)));
    }
    return true;
  };
  turn->callbacks_.on_ids = [self](int32_t id) {
    self->delta_.add_token_ids(id);
    if (self->want_logprobs_ && !self->held_logprobs_.empty()) {
      self->delta_.add_logprobs(self->held_logprobs_.front());
      self->held_logprobs_.pop_front();
    }
  };
  turn->callbacks_.on_text = [self](std::string_view text) {
    self->delta_.mutable_text()->append(text.data(), text.size());
  };
  turn->driver_ = std::make_unique<engine::TurnDriver>(session->sequence(), tokenizer, *sampler,
                                                       options, turn->callbacks_);
  turn->evicted_before_ = session->sequence().cache().evicted_total();
  // Last, so that nothing after it can fail with pins left for tokens that
  // never come.
  SINKSERVE_RETURN_IF_ERROR(PinPrompt(*context.encoder, chat_template, text_context, request,
                                      *prompt, limits, session, context.metrics));
  if (absl::Status s = turn->driver_->Start(*prompt); !s.ok()) {
    session->sequence().mutable_cache().ClosePins();
    return s;
  }
  session->Touch();
  return turn;
}

void ChatTurn::Flush() {
  if (delta_.token_ids().empty() && delta_.text().empty()) return;
  const auto now = std::chrono::steady_clock::now();
  const int n = delta_.token_ids_size();
  if (n > 0 && context_.metrics != nullptr) {
    if (!first_token_.has_value()) {
      context_.metrics->ObserveTimeToFirstToken(Seconds(now - received_));
    } else {
      context_.metrics->ObserveInterTokenLatency(Seconds(now - last_token_) / n);
    }
  }
  if (n > 0) {
    if (!first_token_.has_value()) first_token_ = now;
    last_token_ = now;
  }
  if (!record_.turn_id.empty()) {
    record_.text += delta_.text();
    record_.token_ids.insert(record_.token_ids.end(), delta_.token_ids().begin(),
                             delta_.token_ids().end());
    record_.logprobs.insert(record_.logprobs.end(), delta_.logprobs().begin(),
                            delta_.logprobs().end());
  }
  v1::ChatResponse response;
  response.mutable_delta()->Swap(&delta_);
  output_->Send(std::move(response));
}

void ChatTurn::OnEnd(const absl::Status& status) {
  if (override_sampler_ != nullptr) {
    // Same RNG and penalty window as if the session's own sampler had run.
    (void)session_->sampler().RestoreState(override_sampler_->SaveState());
  }
  // A turn that stopped before its whole prompt was fed pins what arrived.
  session_->sequence().mutable_cache().ClosePins();
  // Failed and cancelled turns fed, generated and evicted too.
  const engine::GenerationStats& stats = driver_->stats();
  const int64_t evicted = session_->sequence().cache().evicted_total() - evicted_before_;
  if (Metrics* metrics = context_.metrics; metrics != nullptr) {
    metrics->AddGenerated(stats.generated_tokens);
    metrics->AddPromptTokens(stats.prompt_tokens);
    metrics->AddEvictions(memory::PolicyKindName(session_->config().policy.kind), evicted);
  }
  // The client hears the turn is over only once its checkpoint is durable;
  // the turns ending in the same scheduler step share one sync.
  std::shared_ptr<TurnOutput> output = output_;
  const std::string id = session_->id();
  if (!status.ok()) {
    session_->Touch();
    // Keep the store in step with what the failed turn left in memory.
    context_.sessions->CheckpointTurn(session_, [output, id, status](const absl::Status& s) {
      if (!s.ok()) ServerLog("checkpoint of session ", id, " failed: ", s.ToString());
      output->TurnEnded(status, nullptr);
    });
    return;
  }
  Flush();
  session_->FinishRound();
  auto response = std::make_shared<v1::ChatResponse>();
  v1::TurnEnd* end = response->mutable_turn_end();
  end->set_stop_reason(ToProto(stats.stop));
  end->mutable_usage()->set_prompt_tokens(stats.prompt_tokens);
  end->mutable_usage()->set_generated_tokens(stats.generated_tokens);
  end->mutable_usage()->set_cells_kept(session_->sequence().cache().size());
  end->mutable_usage()->set_cells_evicted(evicted);
  end->mutable_usage()->set_cells_pinned(session_->sequence().cache().pinned());
  if (first_token_.has_value()) {
    end->mutable_timings()->set_time_to_first_token_ms(1e3 * Seconds(*first_token_ - received_));
  }
  if (stats.generate_seconds > 0) {
    end->mutable_timings()->set_tokens_per_second(stats.generated_tokens / stats.generate_seconds);
  }
  // Stored before the checkpoint is captured, so the result is durable
  // exactly when this turn is.
  if (!record_.turn_id.empty()) {
    end->set_turn_id(record_.turn_id);
    record_.stop_reason = end->stop_reason();
    record_.prompt_tokens = end->usage().prompt_tokens();
    record_.generated_tokens = end->usage().generated_tokens();
    record_.cells_kept = end->usage().cells_kept();
    record_.cells_evicted = end->usage().cells_evicted();
    session_->set_last_turn(std::move(record_));
  } else if (!session_->last_turn().empty()) {
    // The last completed turn has no id now: an older id must not replay.
    session_->set_last_turn(memory::CompletedTurn());
  }
  context_.sessions->CheckpointTurn(session_, [output, id, response](const absl::Status& s) {
    if (!s.ok()) {
      ServerLog("checkpoint of session ", id, " failed: ", s.ToString());
      output->TurnEnded(absl::UnavailableError(absl::StrCat(
                            "the turn ran but its checkpoint failed: ", s.message())),
                        nullptr);
      return;
    }
    output->TurnEnded(absl::OkStatus(), response.get());
  });
}

}  // namespace sinkserve::service
