// ChatTurn: one user turn of a Chat stream, as the scheduler steps it.
//
// It formats the user's message with the session's chat template and
// tokenizes it (special tokens count in the template's markup only), drives
// the session's Sequence with an engine::TurnDriver (the same loop
// engine::RunTurn runs alone, so a turn produces the same tokens batched or
// alone), streams token deltas to its TurnOutput, and when the turn
// ends closes the round, checkpoints the session and only then sends TurnEnd:
// a client that saw TurnEnd can rely on the turn surviving a crash. A turn
// with a turn_id also leaves its result in the session (and so in that
// checkpoint) for a retry of the same id to replay.
#ifndef SINKSERVE_SERVICE_SERVER_CHAT_TURN_H_
#define SINKSERVE_SERVICE_SERVER_CHAT_TURN_H_

#include <chrono>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/generator.h"
#include "engine/sampler.h"
#include "engine/session.h"
#include "service/chat_template.h"
#include "service/metrics.h"
#include "service/server/scheduler.h"
#include "service/server/serving_model.h"
#include "service/server/session_manager.h"
#include "sinkserve/v1/sinkserve.pb.h"

namespace sinkserve::service {

// Where a turn's responses go (the Chat stream). Called on the scheduler
// thread; implementations are thread-safe.
class TurnOutput {
 public:
  virtual ~TurnOutput() = default;
  // Room for one more response in the bounded buffer.
  virtual bool HasRoom() const = 0;
  // The client cancelled the turn, or the stream is gone.
  virtual bool CancelRequested() const = 0;
  // Queues a response (dropped once the stream is gone).
  virtual void Send(v1::ChatResponse response) = 0;
  // The turn is over: OK with its TurnEnd response (queued as the turn is
  // marked over, so a client answering TurnEnd at once finds the stream
  // free), or the error that ended it (`turn_end` null).
  virtual void TurnEnded(const absl::Status& status, v1::ChatResponse* turn_end) = 0;
};

struct ChatTurnLimits {
  // Prompt tokens one turn may add (the formatted message); more is
  // RESOURCE_EXHAUSTED. Default: 8192.
  int max_prompt_tokens = 8192;
  // Tokens generated when the turn does not say. Default: 256.
  int default_max_tokens = 256;
  // Most tokens a turn may ask for. Default: 8192.
  int max_tokens_limit = 8192;
  // Fewest window cells pins may leave a session with a windowed policy
  // (window, streaming, sirllm): its pinned system prompt and turns take at
  // most window - min_window cells. Default: 16.
  int min_window = 16;
};

// Most cells a session under `policy` may pin: the policy's own limit, and
// for windowed policies what leaves `limits.min_window` cells of window.
int64_t PinLimitOf(const memory::PolicyConfig& policy, const ChatTurnLimits& limits);

// Cells the system prompt takes with its template markup (and BOS) at the
// start of the first turn; 0 without a system prompt.
absl::StatusOr<int64_t> SystemPromptCells(const TurnEncoder& encoder,
                                          const ChatTemplate& chat_template,
                                          std::string_view system_prompt);

// Checked when a session is created or first opened, where the client can
// still fix its config. RESOURCE_EXHAUSTED when the first turn's markup and
// the system prompt take `limits.max_prompt_tokens` or more on their own: no
// user message would fit, so every turn of the session would fail.
// INVALID_ARGUMENT, with the numbers, when the system prompt is to be pinned
// and its cells exceed PinLimitOf(config.policy, limits).
absl::Status CheckSystemPromptFits(const TurnEncoder& encoder, const ChatTemplate& chat_template,
                                   const engine::SessionConfig& config,
                                   const ChatTurnLimits& limits);

// Errors that refuse one turn (a pin over the session's limit, a pin
// without a turn_id) rather than end its stream: the stream answers them with
// a TurnError and goes on.
absl::Status TurnOnlyError(absl::Status status);
bool IsTurnOnlyError(const absl::Status& status);

struct ChatTurnContext {
  ServingModel* model = nullptr;
  const TurnEncoder* encoder = nullptr;  // of model->tokenizer
  SessionManager* sessions = nullptr;
  Metrics* metrics = nullptr;  // may be null
  ChatTurnLimits limits;
};

class ChatTurn : public ScheduledTurn {
 public:
  // Validates and tokenizes the turn and starts its driver. INVALID_ARGUMENT
  // (empty text, bad settings), RESOURCE_EXHAUSTED (prompt over the limit).
  static absl::StatusOr<std::unique_ptr<ChatTurn>> Create(
      const ChatTurnContext& context, engine::Session* session, const v1::UserTurn& request,
      std::shared_ptr<TurnOutput> output, std::chrono::steady_clock::time_point received);

  engine::TurnDriver& driver() override { return *driver_; }
  bool HasRoom() const override { return output_->HasRoom(); }
  bool CancelRequested() const override { return output_->CancelRequested(); }
  void OnStep() override { Flush(); }
  void OnEnd(const absl::Status& status) override;

 private:
  ChatTurn(const ChatTurnContext& context, engine::Session* session,
           std::shared_ptr<TurnOutput> output);
  // Sends the tokens and text gathered since the last delta.
  void Flush();

  ChatTurnContext context_;
  engine::Session* session_;
  std::shared_ptr<TurnOutput> output_;
  bool want_logprobs_ = false;
  std::deque<float> held_logprobs_;  // of sampled tokens whose ids are not out yet
  engine::GeneratorOptions options_;
  engine::GeneratorCallbacks callbacks_;
  // This turn's sampler when it overrides the session's settings; it carries
  // the session sampler's RNG and penalty window in and back out.
  std::unique_ptr<engine::Sampler> override_sampler_;
  std::unique_ptr<engine::TurnDriver> driver_;

  v1::TokenDelta delta_;  // gathered since the last Flush
  // The whole reply, gathered only for a turn with a turn_id: it becomes the
  // session's last completed turn, which a retry with that id replays.
  memory::CompletedTurn record_;
  std::chrono::steady_clock::time_point received_;
  std::optional<std::chrono::steady_clock::time_point> first_token_;
  std::chrono::steady_clock::time_point last_token_;
  // The cache's eviction count when the turn began: the driver reports a
  // turn's evictions only when it finishes, not when it fails.
  int64_t evicted_before_ = 0;
};

}  // namespace sinkserve::service

#endif  // SINKSERVE_SERVICE_SERVER_CHAT_TURN_H_
