#include "memory/checkpoint_pipeline.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "memory/rocksdb_session_store.h"
#include "memory/session_testing.h"
#include "memory/store_test_util.h"

namespace sinkserve::memory {
namespace {

using store_testing::SessionStoreTest;
using store_testing::SimOptions;
using store_testing::SimStateAt;

// The real store, with writes and syncs counted and Appends made to fail on
// demand: the pipeline's contract is about what reaches the store and when.
class InstrumentedStore : public SessionStore {
 public:
  explicit InstrumentedStore(SessionStore* store) : store_(store) {}
  absl::StatusOr<CheckpointResult> Put(const SessionState& state) override {
    writes++;
    return store_->Put(state);
  }
  absl::StatusOr<CheckpointResult> Append(std::string_view id, uint64_t base_version,
                                          const SessionDelta& delta) override {
    if (fail_appends.load() > 0) {
      fail_appends--;
      return absl::UnavailableError("injected I/O error");
    }
    writes++;
    return store_->Append(id, base_version, delta);
  }
  absl::StatusOr<LoadedSession> Load(std::string_view id,
                                     std::string_view fingerprint) const override {
    return store_->Load(id, fingerprint);
  }
  absl::StatusOr<bool> Exists(std::string_view id) const override { return store_->Exists(id); }
  absl::StatusOr<SessionInfo> Info(std::string_view id) const override { return store_->Info(id); }
  absl::StatusOr<ListPage> List(const ListOptions& options) const override {
    return store_->List(options);
  }
  absl::Status Delete(std::string_view id) override { return store_->Delete(id); }
  absl::Status Sync() override {
    syncs++;
    return store_->Sync();
  }
  absl::StatusOr<VerifyReport> Verify() const override { return store_->Verify(); }

  std::atomic<int> writes{0};
  std::atomic<int> syncs{0};
  std::atomic<int> fail_appends{0};

 private:
  SessionStore* store_;
};

// Rows that arrive only when the test lets them (an accelerator's copy).
class GatedRows : public PendingRows {
 public:
  struct Gate {
    std::mutex mu;
    std::condition_variable cv;
    bool open = false;
    void Open() {
      std::lock_guard<std::mutex> lock(mu);
      open = true;
      cv.notify_all();
    }
  };
  GatedRows(std::shared_ptr<Gate> gate, std::string rows)
      : gate_(std::move(gate)), rows_(std::move(rows)) {}
  absl::Status Wait(std::string* out) override {
    std::unique_lock<std::mutex> lock(gate_->mu);
    gate_->cv.wait(lock, [&] { return gate_->open; });
    *out = std::move(rows_);
    return absl::OkStatus();
  }

 private:
  std::shared_ptr<Gate> gate_;
  std::string rows_;
};

// Checkpoint `step` of simulated session `id`: full at 0, else the delta
// from step - 1 (rows included).
PendingCheckpoint SimCheckpoint(const std::string& id, const SimOptions& sim, int64_t step) {
  PendingCheckpoint cp;
  cp.id = id;
  SessionState next = SimStateAt(id, sim, step);
  if (step == 0) {
    cp.bytes = static_cast<int64_t>(next.kv.size());
    cp.full = std::move(next);
  } else {
    absl::StatusOr<SessionDelta> delta = Diff(SimStateAt(id, sim, step - 1), next);
    EXPECT_TRUE(delta.ok()) << delta.status();
    cp.bytes = static_cast<int64_t>(delta->kv.size());
    cp.delta = *std::move(delta);
  }
  return cp;
}

struct Recorder {
  std::mutex mu;
  std::map<std::string, std::vector<absl::StatusOr<CheckpointOutcome>>> outcomes;
  CheckpointDone For(const std::string& id) {
    return [this, id](const absl::StatusOr<CheckpointOutcome>& o) {
      std::lock_guard<std::mutex> lock(mu);
      outcomes[id].push_back(o);
    };
  }
};

class CheckpointPipelineTest : public SessionStoreTest {};

TEST_F(CheckpointPipelineTest, QueuedDeltasChainPerSessionAndLoadExactly) {
  RocksDbSessionStoreOptions store_options;
  store_options.sync = false;
  InstrumentedStore store(&Open(store_options));
  Recorder recorder;
  SimOptions sim;
  constexpr int kSessions = 6;
  constexpr int kSteps = 12;
  {
    CheckpointPipelineOptions options;
    options.writer_threads = 3;
    CheckpointPipeline pipeline(&store, options);
    // Hold every writer on a checkpoint whose rows have not arrived, so that
    // every step of every session is queued before any is written: each
    // delta must still land on the version its predecessor produced.
    auto gate = std::make_shared<GatedRows::Gate>();
    for (int w = 0; w < options.writer_threads; ++w) {
      const std::string id = "gate" + std::to_string(w);
      PendingCheckpoint cp = SimCheckpoint(id, sim, 0);
      std::string rows = std::move(cp.full->kv);
      cp.full->kv.clear();
      cp.rows = std::make_unique<GatedRows>(gate, std::move(rows));
      pipeline.Submit(std::move(cp), recorder.For(id));
    }
    std::vector<PendingCheckpoint> queued;
    for (int64_t step = 0; step <= kSteps; ++step) {
      for (int s = 0; s < kSessions; ++s) {
        queued.push_back(SimCheckpoint("s" + std::to_string(s), sim, step));
      }
    }
    for (PendingCheckpoint& cp : queued) {
      const std::string id = cp.id;
      pipeline.Submit(std::move(cp), recorder.For(id));
    }
    gate->Open();
    pipeline.FlushAll();
    EXPECT_EQ(pipeline.stats().queued, 0);
    EXPECT_EQ(pipeline.stats().queued_bytes, 0);
    EXPECT_EQ(pipeline.stats().written, kSessions * (kSteps + 1) + options.writer_threads);
    EXPECT_GT(pipeline.stats().syncs, 0);
  }
  for (int s = 0; s < kSessions; ++s) {
    const std::string id = "s" + std::to_string(s);
    const auto& outcomes = recorder.outcomes[id];
    ASSERT_EQ(outcomes.size(), kSteps + 1u);
    for (size_t i = 0; i < outcomes.size(); ++i) {
      ASSERT_TRUE(outcomes[i].ok()) << id << " step " << i << ": " << outcomes[i].status();
      EXPECT_TRUE(outcomes[i]->wrote);
      if (i > 0) {
        EXPECT_EQ(outcomes[i]->result.version, outcomes[i - 1]->result.version + 1)
            << "callbacks of one session run in submission order";
      }
    }
    store_testing::ExpectLoads(*store_, SimStateAt(id, sim, kSteps));
  }
  EXPECT_LT(store.syncs.load(), store.writes.load()) << "writes taken together share a sync";
}

TEST_F(CheckpointPipelineTest, DoneMeansSyncedAndSubmitNeverWaitsForRows) {
  InstrumentedStore store(&Open());
  SimOptions sim;
  auto gate = std::make_shared<GatedRows::Gate>();
  std::atomic<int> syncs_at_done{-1};
  std::atomic<bool> room{false};
  CheckpointPipelineOptions options;
  options.writer_threads = 1;
  options.buffer_bytes = 1;  // any queued checkpoint is over budget
  options.on_room = [&room] { room = true; };
  CheckpointPipeline pipeline(&store, options);

  PendingCheckpoint cp = SimCheckpoint("gated", sim, 0);
  std::string rows = std::move(cp.full->kv);
  cp.full->kv.clear();
  cp.rows = std::make_unique<GatedRows>(gate, std::move(rows));
  pipeline.Submit(std::move(cp), [&](const absl::StatusOr<CheckpointOutcome>& o) {
    EXPECT_TRUE(o.ok()) << o.status();
    syncs_at_done = store.syncs.load();
  });
  // Submit returned although the rows have not arrived.
  EXPECT_TRUE(pipeline.Busy("gated"));
  EXPECT_TRUE(pipeline.OverBudget());
  EXPECT_EQ(store.writes.load(), 0);
  gate->Open();
  pipeline.Flush("gated");
  EXPECT_FALSE(pipeline.Busy("gated"));
  EXPECT_FALSE(pipeline.OverBudget());
  // on_room runs on the writer just after the queue shrank.
  for (int i = 0; i < 500 && !room.load(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(room.load()) << "on_room runs when the queue drops under the budget";
  EXPECT_GE(syncs_at_done.load(), 1) << "done ran before the sync that makes it durable";
  store_testing::ExpectLoads(*store_, SimStateAt("gated", sim, 0));
}

TEST_F(CheckpointPipelineTest, FailedWriteBreaksTheChainUntilAFullState) {
  InstrumentedStore store(&Open());
  SimOptions sim;
  Recorder recorder;
  CheckpointPipelineOptions options;
  options.writer_threads = 1;
  CheckpointPipeline pipeline(&store, options);
  pipeline.Submit(SimCheckpoint("a", sim, 0), recorder.For("a"));
  pipeline.Submit(SimCheckpoint("a", sim, 1), recorder.For("a"));
  pipeline.Flush("a");
  EXPECT_FALSE(pipeline.NeedsFull("a"));

  store.fail_appends = 1;
  pipeline.Submit(SimCheckpoint("a", sim, 2), recorder.For("a"));  // fails
  pipeline.Submit(SimCheckpoint("a", sim, 3), recorder.For("a"));  // cannot apply
  pipeline.Submit(PendingCheckpoint{"a"}, recorder.For("a"));      // a barrier
  pipeline.Flush("a");
  ASSERT_EQ(recorder.outcomes["a"].size(), 5u);
  EXPECT_EQ(recorder.outcomes["a"][2].status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(recorder.outcomes["a"][3].status().code(), absl::StatusCode::kAborted);
  EXPECT_FALSE(recorder.outcomes["a"][4].ok()) << "a barrier after a failure is not durable";
  EXPECT_TRUE(pipeline.NeedsFull("a"));
  // The store still holds step 1, whole and readable.
  store_testing::ExpectLoads(*store_, SimStateAt("a", sim, 1));

  // A full state heals the chain; deltas chain on it again.
  PendingCheckpoint full;
  full.id = "a";
  full.full = SimStateAt("a", sim, 4);
  pipeline.Submit(std::move(full), recorder.For("a"));
  pipeline.Submit(SimCheckpoint("a", sim, 5), recorder.For("a"));
  pipeline.Flush("a");
  EXPECT_FALSE(pipeline.NeedsFull("a"));
  ASSERT_EQ(recorder.outcomes["a"].size(), 7u);
  EXPECT_TRUE(recorder.outcomes["a"][5].ok()) << recorder.outcomes["a"][5].status();
  EXPECT_TRUE(recorder.outcomes["a"][6].ok()) << recorder.outcomes["a"][6].status();
  store_testing::ExpectLoads(*store_, SimStateAt("a", sim, 5));
  EXPECT_EQ(pipeline.stats().failed, 3);
}

TEST_F(CheckpointPipelineTest, DestructorWritesEverythingQueued) {
  RocksDbSessionStore& rocks = Open();
  SimOptions sim;
  {
    CheckpointPipeline pipeline(&rocks, CheckpointPipelineOptions{});
    for (int64_t step = 0; step <= 5; ++step) {
      pipeline.Submit(SimCheckpoint("d", sim, step), nullptr);
    }
  }
  store_testing::ExpectLoads(rocks, SimStateAt("d", sim, 5));
}

TEST_F(CheckpointPipelineTest, ForgetStartsTheChainFromTheNextBaseVersion) {
  RocksDbSessionStore& rocks = Open();
  SimOptions sim;
  CheckpointPipeline pipeline(&rocks, CheckpointPipelineOptions{});
  Recorder recorder;
  pipeline.Submit(SimCheckpoint("f", sim, 0), recorder.For("f"));
  pipeline.Flush("f");
  const uint64_t v0 = recorder.outcomes["f"][0]->result.version;
  pipeline.Forget("f");
  // Another writer (a tool, another replica) moved the session on.
  absl::StatusOr<SessionDelta> d1 = Diff(SimStateAt("f", sim, 0), SimStateAt("f", sim, 1));
  ASSERT_TRUE(d1.ok());
  absl::StatusOr<CheckpointResult> v1 = rocks.Append("f", v0, *d1);
  ASSERT_TRUE(v1.ok()) << v1.status();
  PendingCheckpoint cp = SimCheckpoint("f", sim, 2);
  cp.base_version = v1->version;
  pipeline.Submit(std::move(cp), recorder.For("f"));
  pipeline.Flush("f");
  ASSERT_TRUE(recorder.outcomes["f"][1].ok()) << recorder.outcomes["f"][1].status();
  store_testing::ExpectLoads(rocks, SimStateAt("f", sim, 2));
}

}  // namespace
}  // namespace sinkserve::memory
