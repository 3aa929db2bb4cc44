#include "engine/session.h"

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/gguf/model_fingerprint.h"
#include "engine/gguf/model_weights.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "memory/checkpoint_pipeline.h"
#include "memory/rocksdb_session_store.h"

namespace sinkserve::engine {
namespace {

// A fresh directory under TEST_TMPDIR (Bazel) or /tmp.
std::string TempDir() {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string tmpl = std::string(base ? base : "/tmp") + "/session_test.XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) std::abort();
  return tmpl;
}

using memory::PolicyConfig;
using memory::PolicyKind;
using ::testing::HasSubstr;

constexpr int kTurns = 5;
constexpr int kMaxStep = 16;

// What one conversation produced: every turn's tokens and the final state.
struct Transcript {
  std::vector<std::vector<int32_t>> turns;
  memory::SessionState final_state;
};

class SessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* shared = std::getenv("SINKSERVE_SHARED");
    if (shared == nullptr) GTEST_SKIP() << "SINKSERVE_SHARED not set";
    auto weights = ModelWeights::Load(std::string(shared) + "/models/stories260K.gguf");
    ASSERT_TRUE(weights.ok()) << weights.status();
    weights_ = *weights;
    fingerprint_ = ModelFingerprint(weights_->file());
    auto tokenizer = Tokenizer::FromGguf(weights_->file());
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = std::move(*tokenizer);
    auto backend = NewCpuBackend(weights_, {1});
    ASSERT_TRUE(backend.ok()) << backend.status();
    backend_ = std::move(*backend);
    const char* texts[kTurns] = {
        "Once upon a time, there was a little girl named Lily.",
        "She loved to play outside in the park with her big red ball.",
        "One day, she saw a bird",
        "The bird was sad because",
        "Lily said"};
    for (int i = 0; i < kTurns; ++i) {
      EncodeOptions encode;
      encode.add_bos = i == 0;
      auto ids = tokenizer_->Encode(texts[i], encode);
      ASSERT_TRUE(ids.ok()) << ids.status();
      prompts_.push_back(*ids);
    }
    dir_ = TempDir();
  }

  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  SessionConfig Config(const PolicyConfig& policy, bool greedy) const {
    SessionConfig config;
    config.policy = policy;
    config.max_step_tokens = kMaxStep;
    config.sampling.temperature = greedy ? 0.0f : 0.9f;
    config.sampling.repeat_penalty = 1.1f;
    config.sampling.penalty_last_n = 16;
    config.sampling.seed = 1234;
    config.system_prompt = "be kind";
    return config;
  }

  GeneratorOptions TurnOptions() const {
    GeneratorOptions options;
    options.max_tokens = 24;
    options.prefill_chunk = kMaxStep;
    options.stop_at_end_of_text = false;  // fixed-length turns
    return options;
  }

  absl::Status RunTurn(Session& session, int turn, std::vector<int32_t>* out) {
    GeneratorCallbacks callbacks;
    callbacks.on_token = [out](int32_t id) {
      out->push_back(id);
      return true;
    };
    absl::StatusOr<GenerationStats> stats =
        session.Turn(*tokenizer_, prompts_[turn], TurnOptions(), callbacks);
    return stats.status();
  }

  // All turns in one session object.
  Transcript Continuous(const SessionConfig& config) {
    Transcript t;
    auto session = Session::Create("s", backend_.get(), fingerprint_, config);
    EXPECT_TRUE(session.ok()) << session.status();
    if (!session.ok()) return t;
    for (int turn = 0; turn < kTurns; ++turn) {
      t.turns.emplace_back();
      EXPECT_TRUE(RunTurn(**session, turn, &t.turns.back()).ok());
    }
    auto state = (*session)->Snapshot();
    EXPECT_TRUE(state.ok()) << state.status();
    if (state.ok()) t.final_state = *std::move(state);
    return t;
  }

  // Each turn in a new session restored from a store that is reopened (with
  // its block cache) every turn: the process boundary, minus the process.
  Transcript Split(const SessionConfig& config, const std::string& id) {
    Transcript t;
    memory::RocksDbSessionStoreOptions options;
    options.compact_after_deltas = 2;  // fold chains along the way too
    options.background_compaction = false;
    for (int turn = 0; turn < kTurns; ++turn) {
      auto store = memory::RocksDbSessionStore::Open(dir_, options);
      EXPECT_TRUE(store.ok()) << store.status();
      if (!store.ok()) return t;
      std::unique_ptr<Session> session;
      if (turn == 0) {
        auto created = Session::Create(id, backend_.get(), fingerprint_, config);
        EXPECT_TRUE(created.ok()) << created.status();
        if (!created.ok()) return t;
        session = *std::move(created);
      } else {
        auto loaded = (*store)->Load(id, fingerprint_);
        EXPECT_TRUE(loaded.ok()) << loaded.status();
        if (!loaded.ok()) return t;
        auto restored = Session::Restore(backend_.get(), fingerprint_,
                                         std::move(loaded->state), loaded->version);
        EXPECT_TRUE(restored.ok()) << restored.status();
        if (!restored.ok()) return t;
        session = *std::move(restored);
        EXPECT_FALSE(session->dirty());
      }
      t.turns.emplace_back();
      EXPECT_TRUE(RunTurn(*session, turn, &t.turns.back()).ok());
      auto result = session->Checkpoint(store->get());
      EXPECT_TRUE(result.ok()) << result.status();
      if (turn == kTurns - 1) {
        auto state = session->Snapshot();
        EXPECT_TRUE(state.ok()) << state.status();
        if (state.ok()) t.final_state = *std::move(state);
      }
    }
    return t;
  }

  std::shared_ptr<const ModelWeights> weights_;
  std::string fingerprint_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Backend> backend_;
  std::vector<std::vector<int32_t>> prompts_;
  std::string dir_;
};

// The state with what legitimately differs across a restore cleared: slot
// numbers (a restored cache hands out free slots in another order; attention
// sees cells in logical order, so outputs do not depend on them) and times.
memory::SessionState Comparable(const memory::SessionState& s) {
  memory::SessionState c = s.Copy();
  for (memory::Cell& cell : c.cache.cells) cell.slot = 0;
  c.created_at = c.updated_at = absl::UnixEpoch();
  c.id = "s";
  return c;
}

struct PolicyCase {
  const char* name;
  PolicyConfig policy;
};

const PolicyCase kPolicies[] = {
    {"full", PolicyConfig{PolicyKind::kFull}},
    {"window", PolicyConfig{PolicyKind::kWindow, 4, 40}},
    {"streaming", PolicyConfig{PolicyKind::kStreaming, 4, 36}},
    {"sirllm", PolicyConfig{PolicyKind::kSirLlm, 4, 24, 12, 0.9f}},
    {"recompute", PolicyConfig{PolicyKind::kRecompute, 4, 32}},
};

class SessionContinuationTest
    : public SessionTest,
      public ::testing::WithParamInterface<std::tuple<int, bool>> {};

TEST_P(SessionContinuationTest, SplitAcrossRestoresIsBitExact) {
  const PolicyCase& pc = kPolicies[std::get<0>(GetParam())];
  const bool greedy = std::get<1>(GetParam());
  const SessionConfig config = Config(pc.policy, greedy);
  const Transcript one = Continuous(config);
  const Transcript split = Split(config, absl::StrCat(pc.name, greedy ? "-greedy" : "-seeded"));
  ASSERT_EQ(one.turns.size(), static_cast<size_t>(kTurns));
  ASSERT_EQ(split.turns.size(), static_cast<size_t>(kTurns));
  for (int turn = 0; turn < kTurns; ++turn) {
    EXPECT_EQ(one.turns[turn].size(), 24u);
    EXPECT_EQ(one.turns[turn], split.turns[turn]) << pc.name << " turn " << turn;
  }
  EXPECT_TRUE(Comparable(one.final_state) == Comparable(split.final_state)) << pc.name;
  // The comparison is only worth something past evictions and decay.
  EXPECT_EQ(one.final_state.pending.size(), 1u);
  EXPECT_EQ(one.final_state.rounds, kTurns);
  if (pc.policy.kind != PolicyKind::kFull) {
    EXPECT_GT(one.final_state.cache.evicted_total, 100) << pc.name;
  }
  if (!greedy) {
    // Seeded sampling really sampled: some token differs from greedy.
    const Transcript g = Continuous(Config(pc.policy, true));
    EXPECT_NE(g.turns, one.turns) << pc.name;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Policies, SessionContinuationTest,
    ::testing::Combine(::testing::Range(0, 5), ::testing::Bool()),
    [](const ::testing::TestParamInfo<std::tuple<int, bool>>& info) {
      return absl::StrCat(kPolicies[std::get<0>(info.param)].name,
                          std::get<1>(info.param) ? "Greedy" : "Seeded");
    });

TEST_F(SessionTest, IncrementalCheckpointsAreSmallAndReplayExactly) {
  auto store = memory::RocksDbSessionStore::Open(dir_, {});
  ASSERT_TRUE(store.ok()) << store.status();
  // A cache much larger than one turn, as in a real chat.
  const SessionConfig config =
      Config(PolicyConfig{PolicyKind::kSirLlm, 4, 200, 100, 0.9f}, false);
  auto session = Session::Create("inc", backend_.get(), fingerprint_, config);
  ASSERT_TRUE(session.ok()) << session.status();
  std::vector<int32_t> ignored;
  uint64_t full_bytes = 0;
  for (int round = 0; round < 3 * kTurns; ++round) {
    ASSERT_TRUE(RunTurn(**session, round % kTurns, &ignored).ok());
    auto result = (*session)->Checkpoint(store->get());
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_FALSE((*session)->dirty());
    if (round == 0) {
      EXPECT_TRUE(result->full);
    } else if (round >= 8) {  // the cache is full and evicting by now
      EXPECT_FALSE(result->full);
      auto snapshot = (*session)->Snapshot();
      ASSERT_TRUE(snapshot.ok());
      full_bytes = snapshot->kv.size();
      EXPECT_LT(result->bytes_written * 4, full_bytes) << "round " << round;
    }
    auto loaded = (*store)->Load("inc", fingerprint_);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    auto snapshot = (*session)->Snapshot();
    ASSERT_TRUE(snapshot.ok());
    EXPECT_TRUE(loaded->state == *snapshot) << "round " << round;
    EXPECT_EQ(loaded->version, (*session)->version());
  }
  EXPECT_GT((*session)->sequence().cache().evicted_total(), 0);
  // Nothing changed: no write.
  auto again = (*session)->Checkpoint(store->get());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->bytes_written, 0u);
}

// The server's path: every turn captured at once, while earlier captures
// may still be queued, and written by the pipeline's threads, in order. The store must end up at exactly the live state, for every
// policy, and a turn must write no cell it evicted again before its end.
class CaptureTest : public SessionTest, public ::testing::WithParamInterface<int> {};

TEST_P(CaptureTest, QueuedCapturesReplayExactly) {
  const PolicyCase& c = kPolicies[GetParam()];
  auto store = memory::RocksDbSessionStore::Open(dir_, {});
  ASSERT_TRUE(store.ok()) << store.status();
  auto session = Session::Create("cap", backend_.get(), fingerprint_, Config(c.policy, false));
  ASSERT_TRUE(session.ok()) << session.status();
  std::vector<int32_t> ignored;
  std::vector<absl::Status> outcomes;
  std::mutex mu;
  {
    memory::CheckpointPipelineOptions options;
    options.writer_threads = 2;
    memory::CheckpointPipeline pipeline(store->get(), options);
    for (int round = 0; round < 2 * kTurns; ++round) {
      ASSERT_TRUE(RunTurn(**session, round % kTurns, &ignored).ok());
      const memory::KvCache& cache = (*session)->sequence().cache();
      auto captured = (*session)->Capture();
      ASSERT_TRUE(captured.ok()) << captured.status();
      EXPECT_FALSE((*session)->dirty());
      if (captured->delta.has_value()) {
        // Only cells still kept are written.
        EXPECT_LE(captured->delta->kv_cells(), cache.size()) << c.name;
      } else {
        ASSERT_TRUE(captured->full.has_value());
        EXPECT_TRUE(round == 0 || c.policy.kind == PolicyKind::kRecompute) << c.name;
      }
      pipeline.Submit(*std::move(captured),
                      [&](const absl::StatusOr<memory::CheckpointOutcome>& o) {
                        std::lock_guard<std::mutex> lock(mu);
                        outcomes.push_back(o.status());
                      });
    }
    // A clean session captures a barrier.
    auto barrier = (*session)->Capture();
    ASSERT_TRUE(barrier.ok());
    EXPECT_FALSE(barrier->full.has_value() || barrier->delta.has_value());
    pipeline.Submit(*std::move(barrier), nullptr);
  }
  ASSERT_EQ(outcomes.size(), 2u * kTurns);
  for (const absl::Status& o : outcomes) EXPECT_TRUE(o.ok()) << o;
  auto loaded = (*store)->Load("cap", fingerprint_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  auto snapshot = (*session)->Snapshot();
  ASSERT_TRUE(snapshot.ok());
  EXPECT_TRUE(loaded->state == *snapshot) << c.name;
}

INSTANTIATE_TEST_SUITE_P(Policies, CaptureTest, ::testing::Range(0, 5),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return std::string(kPolicies[info.param].name);
                         });

TEST_F(SessionTest, RestoreUnderAnotherModelIsFailedPrecondition) {
  auto session = Session::Create("fp", backend_.get(), fingerprint_,
                                 Config(PolicyConfig{PolicyKind::kFull}, true));
  ASSERT_TRUE(session.ok());
  std::vector<int32_t> ignored;
  ASSERT_TRUE(RunTurn(**session, 0, &ignored).ok());
  auto state = (*session)->Snapshot();
  ASSERT_TRUE(state.ok());
  auto restored = Session::Restore(backend_.get(), "llama-0123", std::move(*state), 1);
  ASSERT_EQ(restored.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(restored.status().message()), HasSubstr(fingerprint_));
  EXPECT_THAT(std::string(restored.status().message()), HasSubstr("llama-0123"));

  auto store = memory::RocksDbSessionStore::Open(dir_, {});
  ASSERT_TRUE(store.ok());
  ASSERT_TRUE((*session)->Checkpoint(store->get()).ok());
  auto loaded = (*store)->Load("fp", "llama-0123");
  ASSERT_EQ(loaded.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr(fingerprint_));
}

TEST_F(SessionTest, PendingTokenAndConfigSurviveRestore) {
  SessionConfig config = Config(PolicyConfig{PolicyKind::kStreaming, 4, 60}, false);
  config.chat_template = "chatml";
  auto session = Session::Create("p", backend_.get(), fingerprint_, config);
  ASSERT_TRUE(session.ok());
  std::vector<int32_t> out;
  ASSERT_TRUE(RunTurn(**session, 0, &out).ok());
  (*session)->set_history_length(2);
  ASSERT_EQ((*session)->sequence().pending().size(), 1u);
  auto state = (*session)->Snapshot();
  ASSERT_TRUE(state.ok());
  ASSERT_EQ(state->pending.size(), 1u);
  EXPECT_EQ(state->pending[0].token, out.back());
  auto restored = Session::Restore(backend_.get(), fingerprint_, std::move(*state), 7);
  ASSERT_TRUE(restored.ok()) << restored.status();
  const Session& r = **restored;
  EXPECT_EQ(r.sequence().pending(), (*session)->sequence().pending());
  EXPECT_EQ(r.config().chat_template, "chatml");
  EXPECT_EQ(r.config().system_prompt, "be kind");
  EXPECT_EQ(r.config().sampling.temperature, 0.9f);
  EXPECT_EQ(r.config().sampling.seed, 1234u);
  EXPECT_EQ(r.config().max_step_tokens, kMaxStep);
  EXPECT_EQ(r.history_length(), 2);
  EXPECT_EQ(r.rounds(), 1);
  EXPECT_EQ(r.version(), 7u);
  EXPECT_FALSE(r.dirty());
}

// The last completed turn rides along with checkpoints (full and delta) and
// comes back from the store, so a retried turn id replays after a restart.
TEST_F(SessionTest, LastTurnSurvivesCheckpointsAndRestore) {
  SessionConfig config = Config(PolicyConfig{PolicyKind::kStreaming, 4, 60}, false);
  auto session = Session::Create("lt", backend_.get(), fingerprint_, config);
  ASSERT_TRUE(session.ok());
  auto store = memory::RocksDbSessionStore::Open(dir_, {});
  ASSERT_TRUE(store.ok());
  std::vector<int32_t> out;
  ASSERT_TRUE(RunTurn(**session, 0, &out).ok());
  memory::CompletedTurn first;
  first.turn_id = "t1";
  first.token_ids = out;
  first.text = "one";
  first.stop_reason = 3;
  (*session)->set_last_turn(first);
  EXPECT_TRUE((*session)->dirty());
  ASSERT_TRUE((*session)->Checkpoint(store->get()).ok());  // full
  ASSERT_TRUE(RunTurn(**session, 1, &out).ok());
  memory::CompletedTurn second = first;
  second.turn_id = "t2";
  second.text = "two";
  (*session)->set_last_turn(second);
  ASSERT_TRUE((*session)->Checkpoint(store->get()).ok());  // a delta
  auto loaded = (*store)->Load("lt", fingerprint_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(loaded->state.last_turn == second);
  auto restored =
      Session::Restore(backend_.get(), fingerprint_, std::move(loaded->state), loaded->version);
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_TRUE((*restored)->last_turn() == second);
  EXPECT_FALSE((*restored)->dirty());
}

TEST_F(SessionTest, InconsistentStatesAreDataLoss) {
  auto session = Session::Create("bad", backend_.get(), fingerprint_,
                                 Config(PolicyConfig{PolicyKind::kWindow, 4, 40}, true));
  ASSERT_TRUE(session.ok());
  std::vector<int32_t> ignored;
  ASSERT_TRUE(RunTurn(**session, 0, &ignored).ok());
  auto good = (*session)->Snapshot();
  ASSERT_TRUE(good.ok());
  struct Case {
    const char* want;
    void (*mutate)(memory::SessionState*);
  };
  const Case cases[] = {
      {"session config", [](memory::SessionState* s) { s->sampler_config.pop_back(); }},
      {"session config", [](memory::SessionState* s) { s->sampler_config[0] = 'X'; }},
      {"sampler state", [](memory::SessionState* s) { s->rng_state = "junk"; }},
      {"kv holds", [](memory::SessionState* s) { s->kv.pop_back(); }},
      {"pending token", [](memory::SessionState* s) { s->pending[0].token = 1 << 20; }},
      {"slot", [](memory::SessionState* s) { s->cache.cells[1].slot = s->cache.cells[0].slot; }},
  };
  for (const Case& c : cases) {
    memory::SessionState s = good->Copy();
    c.mutate(&s);
    auto restored = Session::Restore(backend_.get(), fingerprint_, std::move(s), 1);
    ASSERT_EQ(restored.status().code(), absl::StatusCode::kDataLoss) << c.want;
    EXPECT_THAT(std::string(restored.status().message()), HasSubstr("session bad"));
    EXPECT_THAT(std::string(restored.status().message()), HasSubstr(c.want));
  }
}

TEST_F(SessionTest, OtherKvDtypeIsFailedPrecondition) {
  auto session = Session::Create("dt", backend_.get(), fingerprint_,
                                 Config(PolicyConfig{PolicyKind::kWindow, 4, 40}, true));
  ASSERT_TRUE(session.ok());
  std::vector<int32_t> ignored;
  ASSERT_TRUE(RunTurn(**session, 0, &ignored).ok());
  auto state = (*session)->Snapshot();
  ASSERT_TRUE(state.ok());
  CpuBackendOptions options;
  options.threads = 1;
  options.kv_dtype = KvDtype::kF16;
  auto f16 = NewCpuBackend(weights_, options);
  ASSERT_TRUE(f16.ok());
  auto restored = Session::Restore(f16->get(), fingerprint_, std::move(*state), 1);
  ASSERT_EQ(restored.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(restored.status().message()), HasSubstr("f16"));
}

// Half-precision caches store K/V rows in their own dtype, so a restored
// session continues from exactly the rounded rows it had.
class HalfKvSessionTest : public SessionTest,
                          public ::testing::WithParamInterface<KvDtype> {};

TEST_P(HalfKvSessionTest, SessionsContinueExactly) {
  CpuBackendOptions options;
  options.threads = 1;
  options.kv_dtype = GetParam();
  auto half = NewCpuBackend(weights_, options);
  ASSERT_TRUE(half.ok()) << half.status();
  backend_ = *std::move(half);
  const std::string dtype(KvDtypeName(GetParam()));
  const SessionConfig config = Config(PolicyConfig{PolicyKind::kSirLlm, 4, 24, 12, 0.9f}, false);
  const Transcript one = Continuous(config);
  const Transcript split = Split(config, dtype);
  ASSERT_EQ(one.turns.size(), static_cast<size_t>(kTurns));
  for (const std::vector<int32_t>& turn : one.turns) EXPECT_EQ(turn.size(), 24u);
  EXPECT_EQ(one.turns, split.turns);
  EXPECT_EQ(one.final_state.kv_shape.dtype, dtype);
  EXPECT_EQ(one.final_state.kv_shape.dtype_bytes, 2);
  EXPECT_GT(one.final_state.cache.evicted_total, 100);
  EXPECT_TRUE(Comparable(one.final_state) == Comparable(split.final_state));
}

INSTANTIATE_TEST_SUITE_P(KvDtypes, HalfKvSessionTest,
                         ::testing::Values(KvDtype::kF16, KvDtype::kBF16),
                         [](const ::testing::TestParamInfo<KvDtype>& info) {
                           return std::string(KvDtypeName(info.param));
                         });

TEST_F(SessionTest, CreateRefusesBadInput) {
  const SessionConfig config = Config(PolicyConfig{PolicyKind::kFull}, true);
  EXPECT_EQ(Session::Create("has space", backend_.get(), fingerprint_, config).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Session::Create("x", backend_.get(), "", config).status().code(),
            absl::StatusCode::kInvalidArgument);
  SessionConfig bad = config;
  bad.policy = PolicyConfig{PolicyKind::kWindow, 4, 0};
  EXPECT_EQ(Session::Create("x", backend_.get(), fingerprint_, bad).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sinkserve::engine
