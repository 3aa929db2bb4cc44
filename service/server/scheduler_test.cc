#include "service/server/scheduler.h"

#include <condition_variable>
#include <algorithm>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/cpu/cpu_backend.h"
#include "engine/generator.h"
#include "engine/gguf/model_weights.h"
#include "engine/sampler.h"
#include "engine/sequence.h"
#include "engine/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "memory/cache_policy.h"

namespace sinkserve::service {
namespace {

using engine::GenerationStats;
using engine::GeneratorCallbacks;
using engine::GeneratorOptions;
using engine::Sampler;
using engine::SamplerOptions;
using engine::Sequence;

// One turn for the scheduler, recording its tokens; `room_every` > 1 makes
// its reader lag (HasRoom true one call in room_every).
class RecordingTurn : public ScheduledTurn {
 public:
  RecordingTurn(Sequence* seq, const engine::Tokenizer& tokenizer, Sampler* sampler,
                GeneratorOptions options, int room_every, bool cancel_after_first)
      : options_(std::move(options)),
        room_every_(room_every),
        cancel_after_first_(cancel_after_first) {
    callbacks_.on_token = [this](int32_t id) {
      tokens.push_back(id);
      return true;
    };
    driver_ = std::make_unique<engine::TurnDriver>(*seq, tokenizer, *sampler, options_, callbacks_);
  }

  engine::TurnDriver& driver() override { return *driver_; }
  bool HasRoom() const override { return ++room_calls_ % room_every_ == 0; }
  bool CancelRequested() const override { return cancel_after_first_ && !tokens.empty(); }
  void OnStep() override { ++steps; }
  // The scheduler destroys the turn right after: results go to `result`.
  void OnEnd(const absl::Status& s) override {
    std::lock_guard<std::mutex> lock(*mu);
    if (scheduler != nullptr) result->ended_after_steps = scheduler->stats().steps;
    result->status = s;
    result->stats = driver_->stats();
    result->tokens.insert(result->tokens.end(), tokens.begin(), tokens.end());
    ++*ended;
    cv->notify_all();
  }

  struct Result {
    std::vector<int32_t> tokens;
    absl::Status status;
    GenerationStats stats;
    int64_t ended_after_steps = -1;  // batched steps the scheduler had run
  };
  std::vector<int32_t> tokens;
  int steps = 0;
  Result* result = nullptr;
  std::mutex* mu = nullptr;
  std::condition_variable* cv = nullptr;
  int* ended = nullptr;
  const Scheduler* scheduler = nullptr;  // for Result::ended_after_steps

 private:
  GeneratorOptions options_;
  GeneratorCallbacks callbacks_;
  std::unique_ptr<engine::TurnDriver> driver_;
  int room_every_;
  mutable int room_calls_ = 0;
  bool cancel_after_first_;
};

class SchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* shared = std::getenv("SINKSERVE_SHARED");
    if (shared == nullptr) GTEST_SKIP() << "SINKSERVE_SHARED not set";
    auto weights = engine::ModelWeights::Load(std::string(shared) + "/models/stories260K.gguf");
    ASSERT_TRUE(weights.ok()) << weights.status();
    auto tokenizer = engine::Tokenizer::FromGguf((*weights)->file());
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = std::move(*tokenizer);
    auto backend = engine::NewCpuBackend(*weights, {1});
    ASSERT_TRUE(backend.ok()) << backend.status();
    backend_ = std::move(*backend);
  }

  std::unique_ptr<Sequence> NewSequence() {
    engine::SequenceOptions options;
    options.policy = *memory::PolicyConfig::Parse("streaming(4,28)");
    options.max_step_tokens = 8;  // prompts take several prefill chunks
    auto seq = Sequence::Create(backend_.get(), options);
    EXPECT_TRUE(seq.ok()) << seq.status();
    return std::move(*seq);
  }

  std::vector<int32_t> Prompt(int i) {
    const char* texts[] = {"Once upon a time", "Tom had a big red ball and a dog", "The sun",
                           "Lily and Ben went to the park to play"};
    engine::EncodeOptions encode;
    encode.add_bos = true;
    auto ids = tokenizer_->Encode(std::string(texts[i % 4]) + std::string(i / 4, ','), encode);
    EXPECT_TRUE(ids.ok());
    return *ids;
  }

  static SamplerOptions Sampling(int i) {
    SamplerOptions s;
    s.temperature = i % 2 == 0 ? 0.0f : 0.9f;  // greedy and seeded sampling
    s.seed = 100 + i;
    return s;
  }

  std::unique_ptr<engine::Tokenizer> tokenizer_;
  std::unique_ptr<engine::Backend> backend_;
};

// Many turns batched by the scheduler give every sequence exactly the tokens
// RunTurn gives it alone, over two turns each (the second starts from the
// first's pending token), with prefill chunks and decode steps mixed in one
// batch and lagging readers skipping steps.
TEST_F(SchedulerTest, BatchedTurnsEqualTurnsAlone) {
  constexpr int kTurns = 12;
  GeneratorOptions options;
  options.max_tokens = 40;
  options.stop_at_end_of_text = false;

  std::vector<std::vector<int32_t>> alone(kTurns);
  for (int i = 0; i < kTurns; ++i) {
    auto seq = NewSequence();
    Sampler sampler(Sampling(i));
    GeneratorCallbacks callbacks;
    callbacks.on_token = [&](int32_t id) {
      alone[i].push_back(id);
      return true;
    };
    ASSERT_TRUE(engine::RunTurn(*seq, *tokenizer_, Prompt(i), sampler, options, callbacks).ok());
    ASSERT_TRUE(
        engine::RunTurn(*seq, *tokenizer_, Prompt(i + 1), sampler, options, callbacks).ok());
  }

  std::vector<std::unique_ptr<Sequence>> seqs;
  std::vector<std::unique_ptr<Sampler>> samplers;
  for (int i = 0; i < kTurns; ++i) {
    seqs.push_back(NewSequence());
    samplers.push_back(std::make_unique<Sampler>(Sampling(i)));
  }
  std::vector<std::vector<int32_t>> batched(kTurns);
  Scheduler scheduler(backend_.get(), SchedulerOptions{});
  for (int round = 0; round < 2; ++round) {
    std::mutex mu;
    std::condition_variable cv;
    int ended = 0;
    std::vector<RecordingTurn::Result> results(kTurns);
    for (int i = 0; i < kTurns; ++i) {
      auto turn =
          std::make_unique<RecordingTurn>(seqs[i].get(), *tokenizer_, samplers[i].get(), options,
                                          /*room_every=*/1 + i % 3, false);
      ASSERT_TRUE(turn->driver().Start(Prompt(i + round)).ok());
      turn->mu = &mu;
      turn->cv = &cv;
      turn->ended = &ended;
      turn->result = &results[i];
      scheduler.Post([&scheduler, t = turn.release()] {
        scheduler.AddTurn(std::unique_ptr<ScheduledTurn>(t));
      });
    }
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return ended == kTurns; });
    for (int i = 0; i < kTurns; ++i) {
      EXPECT_TRUE(results[i].status.ok()) << results[i].status;
      batched[i].insert(batched[i].end(), results[i].tokens.begin(), results[i].tokens.end());
    }
  }
  for (int i = 0; i < kTurns; ++i) EXPECT_EQ(batched[i], alone[i]) << "sequence " << i;
  SchedulerStats stats = scheduler.stats();
  EXPECT_GT(stats.turns_stepped, stats.steps) << "turns were never batched";
}

TEST_F(SchedulerTest, CancelEndsTheTurnAtOnce) {
  GeneratorOptions options;
  options.max_tokens = 100000;
  options.stop_at_end_of_text = false;
  auto seq = NewSequence();
  Sampler sampler(Sampling(0));
  std::mutex mu;
  std::condition_variable cv;
  int ended = 0;
  Scheduler scheduler(backend_.get(), SchedulerOptions{});
  auto turn = std::make_unique<RecordingTurn>(seq.get(), *tokenizer_, &sampler, options, 1,
                                              /*cancel_after_first=*/true);
  ASSERT_TRUE(turn->driver().Start(Prompt(0)).ok());
  turn->mu = &mu;
  turn->cv = &cv;
  turn->ended = &ended;
  RecordingTurn::Result result;
  turn->result = &result;
  scheduler.Post(
      [&scheduler, t = turn.release()] { scheduler.AddTurn(std::unique_ptr<ScheduledTurn>(t)); });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return ended == 1; });
  EXPECT_EQ(result.stats.stop, engine::StopReason::kCancelled);
  EXPECT_EQ(result.stats.generated_tokens, 1);
  // The sampled token stays pending: the conversation keeps it.
  EXPECT_EQ(seq->pending().size(), 1u);
}

// Runs `prompts` as turns of `max_tokens` on one scheduler, all added in one
// task (so they start in the same step); returns their results.
std::vector<RecordingTurn::Result> RunTogether(SchedulerTest* test, engine::Backend* backend,
                                               const engine::Tokenizer& tokenizer,
                                               const std::vector<std::vector<int32_t>>& prompts,
                                               int max_tokens, int max_batch) {
  GeneratorOptions options;
  options.max_tokens = max_tokens;
  options.stop_at_end_of_text = false;
  const size_t n = prompts.size();
  std::vector<std::unique_ptr<Sequence>> seqs;
  std::vector<std::unique_ptr<Sampler>> samplers;
  std::vector<RecordingTurn::Result> results(n);
  std::mutex mu;
  std::condition_variable cv;
  int ended = 0;
  SchedulerOptions scheduler_options;
  scheduler_options.max_batch = max_batch;
  Scheduler scheduler(backend, scheduler_options);
  std::vector<RecordingTurn*> turns;
  for (size_t i = 0; i < n; ++i) {
    engine::SequenceOptions seq_options;
    seq_options.policy = *memory::PolicyConfig::Parse("streaming(4,28)");
    seq_options.max_step_tokens = 8;
    seqs.push_back(*Sequence::Create(backend, seq_options));
    samplers.push_back(std::make_unique<Sampler>(SamplerOptions{}));
    auto* turn = new RecordingTurn(seqs.back().get(), tokenizer, samplers.back().get(), options,
                                   /*room_every=*/1, false);
    EXPECT_TRUE(turn->driver().Start(prompts[i]).ok());
    turn->mu = &mu;
    turn->cv = &cv;
    turn->ended = &ended;
    turn->result = &results[i];
    turn->scheduler = &scheduler;
    turns.push_back(turn);
  }
  scheduler.Post([&scheduler, turns] {
    for (RecordingTurn* t : turns) scheduler.AddTurn(std::unique_ptr<ScheduledTurn>(t));
  });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return ended == static_cast<int>(n); });
  return results;
}

// A long prompt is fed a chunk per step alongside the other turns: turns that
// arrive with it finish in their own number of steps, not after its prefill.
TEST_F(SchedulerTest, LongPrefillDoesNotStallOtherTurns) {
  // (results[0], the long one, ends ~50 steps after the others.)
  const std::vector<int32_t> long_prompt = Prompt(4 * 400);  // ~400 tokens: 50 chunks of 8
  ASSERT_GT(long_prompt.size(), 400u);
  std::vector<std::vector<int32_t>> prompts = {long_prompt, Prompt(0), Prompt(2), Prompt(1)};
  const auto results = RunTogether(this, backend_.get(), *tokenizer_, prompts, 10,
                                   SchedulerOptions{}.max_batch);
  // A turn of C prefill chunks and 10 tokens takes C + 9 steps (the last
  // chunk's logits give the first token) and ends in the last of them, after
  // C + 8 completed ones: exactly what it would take alone.
  for (size_t i = 0; i < results.size(); ++i) {
    ASSERT_TRUE(results[i].status.ok()) << results[i].status;
    const int64_t chunks = static_cast<int64_t>(prompts[i].size() + 7) / 8;
    EXPECT_EQ(results[i].ended_after_steps, chunks + 8) << "turn " << i;
  }
}

// More turns than --max-batch: the scheduler rotates through them, so equal
// turns finish within one rotation of each other instead of one after another.
TEST_F(SchedulerTest, TurnsBeyondMaxBatchTakeTurns) {
  std::vector<std::vector<int32_t>> prompts(4, Prompt(0));
  const auto results = RunTogether(this, backend_.get(), *tokenizer_, prompts, 12,
                                   /*max_batch=*/1);
  int64_t first = results[0].ended_after_steps, last = first;
  for (const auto& r : results) {
    ASSERT_TRUE(r.status.ok()) << r.status;
    first = std::min(first, r.ended_after_steps);
    last = std::max(last, r.ended_after_steps);
  }
  EXPECT_LE(last - first, static_cast<int64_t>(prompts.size())) << first << " .. " << last;
}

}  // namespace
}  // namespace sinkserve::service
