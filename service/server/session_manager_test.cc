#include "service/server/session_manager.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <mutex>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "memory/rocksdb_session_store.h"

namespace sinkserve::service {
namespace {

// The real store, counting Sync calls (the group commit's contract is about
// how many there are), whose syncs a test can hold back (a slow disk).
class SyncCountingStore : public memory::SessionStore {
 public:
  explicit SyncCountingStore(memory::SessionStore* store) : store_(store) {}
  absl::StatusOr<memory::CheckpointResult> Put(const memory::SessionState& state) override {
    return store_->Put(state);
  }
  absl::StatusOr<memory::CheckpointResult> Append(std::string_view id, uint64_t base_version,
                                                  const memory::SessionDelta& delta) override {
    return store_->Append(id, base_version, delta);
  }
  absl::StatusOr<memory::LoadedSession> Load(std::string_view id,
                                             std::string_view fingerprint) const override {
    return store_->Load(id, fingerprint);
  }
  absl::StatusOr<bool> Exists(std::string_view id) const override { return store_->Exists(id); }
  absl::StatusOr<memory::SessionInfo> Info(std::string_view id) const override {
    return store_->Info(id);
  }
  absl::StatusOr<memory::ListPage> List(const memory::ListOptions& options) const override {
    return store_->List(options);
  }
  absl::Status Delete(std::string_view id) override { return store_->Delete(id); }
  absl::StatusOr<memory::VerifyReport> Verify() const override { return store_->Verify(); }
  absl::Status Sync() override {
    {
      // Held at most 10 s, so a manager that wrongly waits fails, not hangs.
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, std::chrono::seconds(10), [this] { return !held_; });
    }
    ++syncs;
    return store_->Sync();
  }
  void Hold() {
    std::lock_guard<std::mutex> lock(mu_);
    held_ = true;
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    held_ = false;
    cv_.notify_all();
  }

  std::atomic<int> syncs{0};

 private:
  memory::SessionStore* store_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool held_ = false;
};

class SessionManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* shared = std::getenv("SINKSERVE_SHARED");
    if (shared == nullptr) GTEST_SKIP() << "SINKSERVE_SHARED not set";
    ServingModelOptions model;
    model.path = std::string(shared) + "/models/stories260K.gguf";
    model.threads = 1;
    auto loaded = ServingModel::Load(model);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    model_ = std::move(*loaded);
    dir_ = std::filesystem::temp_directory_path() /
           ("session_manager_test_" +
            std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    memory::RocksDbSessionStoreOptions store_options;
    store_options.sync = false;
    auto store = memory::RocksDbSessionStore::Open(dir_.string(), store_options);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }

  void TearDown() override {
    store_.reset();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  // Options on the test's clock (now_), which only the test moves.
  SessionManagerOptions Options(int in_memory, int64_t max_sessions = 0) {
    SessionManagerOptions options;
    options.max_sessions_in_memory = in_memory;
    options.max_sessions = max_sessions;
    options.default_policy = *memory::PolicyConfig::Parse("streaming(4,60)");
    options.clock = [this] { return now_; };
    return options;
  }

  std::unique_ptr<SessionManager> Manager(const SessionManagerOptions& options) {
    auto manager = SessionManager::Create(model_.get(), store_.get(), nullptr, options);
    EXPECT_TRUE(manager.ok()) << manager.status();
    return std::move(*manager);
  }

  std::unique_ptr<SessionManager> Manager(int in_memory, int64_t max_sessions = 0) {
    return Manager(Options(in_memory, max_sessions));
  }

  static absl::StatusCode Code(const absl::StatusOr<AttachResult>& r) { return r.status().code(); }

  std::unique_ptr<ServingModel> model_;
  std::filesystem::path dir_;
  std::unique_ptr<memory::RocksDbSessionStore> store_;
  v1::SessionConfig config_;
  absl::Time now_ = absl::FromUnixSeconds(1700000000);
};

TEST_F(SessionManagerTest, OneStreamPerSession) {
  auto m = Manager(8);
  auto a = m->Attach("a", /*create_if_missing=*/true, config_);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE(a->created);
  EXPECT_FALSE(a->restored);
  EXPECT_EQ(Code(m->Attach("a", true, config_)), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(m->Delete("a").code(), absl::StatusCode::kFailedPrecondition);
  m->Detach("a");
  auto again = m->Attach("a", false, config_);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->session, a->session);  // still in memory
  EXPECT_FALSE(again->restored);
  EXPECT_FALSE(again->created);
}

TEST_F(SessionManagerTest, BadRequests) {
  auto m = Manager(8);
  EXPECT_EQ(Code(m->Attach("nobody", false, config_)), absl::StatusCode::kNotFound);
  EXPECT_EQ(Code(m->Attach("has space", true, config_)), absl::StatusCode::kInvalidArgument);
  v1::SessionConfig bad;
  bad.mutable_policy()->set_kind(v1::POLICY_WINDOW);  // window 0
  EXPECT_EQ(Code(m->Attach("bad", true, bad)), absl::StatusCode::kInvalidArgument);
  bad.Clear();
  bad.set_chat_template("no-such-template");
  EXPECT_EQ(Code(m->Attach("bad", true, bad)), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m->Info("nobody").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(m->Delete("nobody").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(m->sessions_in_memory(), 0);
}

// Beyond the limit, detached sessions are checkpointed and dropped LRU; they
// come back from the store on attach.
TEST_F(SessionManagerTest, LeastRecentlyUsedLeaveMemory) {
  auto m = Manager(2);
  for (const char* id : {"a", "b", "c"}) {
    ASSERT_TRUE(m->Attach(id, true, config_).ok());
    m->Detach(id);
  }
  EXPECT_EQ(m->sessions_in_memory(), 2);
  auto a = m->Attach("a", false, config_);  // "a" was the least recently used
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE(a->restored);
  EXPECT_EQ(m->sessions_in_memory(), 2);
  auto b = m->Attach("b", false, config_);  // dropped to make room for "a"
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_TRUE(b->restored);
  // Both in memory are attached: nothing can make room.
  EXPECT_EQ(Code(m->Attach("c", false, config_)), absl::StatusCode::kResourceExhausted);
  m->Detach("a");
  EXPECT_TRUE(m->Attach("c", false, config_).ok());
}

// Detached sessions unused for idle_timeout leave memory (checkpointed
// first); attached ones stay however long they go unused.
// GetSession of a session that is only in the store reports its whole
// config, as for one in memory (read from its metadata, not its K/V rows).
TEST_F(SessionManagerTest, InfoOfAStoredSessionCarriesItsConfig) {
  auto m = Manager(8);
  v1::SessionConfig config;
  config.set_system_prompt("You are a storyteller.");
  config.set_chat_template("chatml");
  config.mutable_sampling()->set_temperature(0.5f);
  config.mutable_sampling()->set_top_k(7);
  config.mutable_policy()->set_kind(v1::POLICY_SIRLLM);
  config.mutable_policy()->set_sinks(2);
  config.mutable_policy()->set_entropy(10);
  config.mutable_policy()->set_window(20);
  config.mutable_policy()->set_decay(0.75f);
  ASSERT_TRUE(m->CreateDetached("kept", config).ok());
  auto in_memory = m->Info("kept");
  ASSERT_TRUE(in_memory.ok()) << in_memory.status();

  auto fresh = Manager(8);  // a restarted server: nothing in memory
  EXPECT_EQ(fresh->sessions_in_memory(), 0);
  auto stored = fresh->Info("kept");
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(stored->config().system_prompt(), "You are a storyteller.");
  EXPECT_EQ(stored->chat_template(), "chatml");
  EXPECT_FLOAT_EQ(stored->config().sampling().temperature(), 0.5f);
  EXPECT_EQ(stored->config().sampling().top_k(), 7u);
  EXPECT_EQ(stored->config().policy().kind(), v1::POLICY_SIRLLM);
  EXPECT_FLOAT_EQ(stored->config().policy().decay(), 0.75f);
  EXPECT_EQ(stored->SerializeAsString(), in_memory->SerializeAsString())
      << stored->DebugString() << "\nvs\n" << in_memory->DebugString();
  EXPECT_EQ(fresh->sessions_in_memory(), 0) << "Info loaded the session";
}

TEST_F(SessionManagerTest, IdleSessionsLeaveMemory) {
  SessionManagerOptions options = Options(8);
  options.idle_timeout = absl::Minutes(10);
  auto m = Manager(options);
  std::map<std::string, engine::Session*> sessions;
  for (const char* id : {"old", "recent", "busy"}) {
    auto r = m->Attach(id, true, config_);
    ASSERT_TRUE(r.ok()) << r.status();
    sessions[id] = r->session;
  }
  // Changed since its last checkpoint: dropping it must not lose that.
  sessions["old"]->set_history_length(7);
  m->Detach("old");
  now_ += absl::Minutes(6);
  m->Detach("recent");
  now_ += absl::Minutes(5);  // old idle 11 min, recent 5
  ASSERT_TRUE(m->Sweep().ok());
  // "old" was dirty: the sweep started its checkpoint without waiting, and
  // drops it once that is durable.
  EXPECT_EQ(m->sessions_in_memory(), 3);
  m->WaitForCheckpoints();
  ASSERT_TRUE(m->Sweep().ok());
  EXPECT_EQ(m->sessions_in_memory(), 2);
  auto recent = m->Attach("recent", false, config_);
  ASSERT_TRUE(recent.ok()) << recent.status();
  EXPECT_FALSE(recent->restored);
  EXPECT_EQ(recent->session, sessions["recent"]);
  m->Detach("recent");  // used now: its idle time starts again

  now_ += absl::Minutes(9);
  ASSERT_TRUE(m->Sweep().ok());
  EXPECT_EQ(m->sessions_in_memory(), 2) << "recent was used 9 minutes ago";
  now_ += absl::Minutes(2);
  auto old = m->Attach("old", false, config_);  // also sweeps: recent goes
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_TRUE(old->restored);
  EXPECT_EQ(old->session->history_length(), 7);
  EXPECT_EQ(m->sessions_in_memory(), 2);
  recent = m->Attach("recent", false, config_);
  ASSERT_TRUE(recent.ok()) << recent.status();
  EXPECT_TRUE(recent->restored);

  // "busy" stayed attached for 22 minutes and is still the same session.
  EXPECT_EQ(Code(m->Attach("busy", false, config_)), absl::StatusCode::kFailedPrecondition);
  m->Detach("busy");
  auto busy = m->Attach("busy", false, config_);
  ASSERT_TRUE(busy.ok()) << busy.status();
  EXPECT_EQ(busy->session, sessions["busy"]);
}

TEST_F(SessionManagerTest, ZeroIdleTimeoutKeepsSessions) {
  SessionManagerOptions options = Options(8);
  options.idle_timeout = absl::ZeroDuration();
  auto m = Manager(options);
  auto a = m->Attach("a", true, config_);
  ASSERT_TRUE(a.ok()) << a.status();
  m->Detach("a");
  now_ += absl::Hours(24 * 365);
  ASSERT_TRUE(m->Sweep().ok());
  auto again = m->Attach("a", false, config_);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(again->restored);
  EXPECT_EQ(again->session, a->session);
}

// Beyond max_session_memory_bytes, detached sessions leave memory least
// recently used first; attached ones stay even beyond it.
TEST_F(SessionManagerTest, MemoryBudgetDropsLeastRecentlyUsed) {
  int64_t one = 0;
  {
    auto probe = Manager(8);
    auto p = probe->Attach("probe", true, config_);
    ASSERT_TRUE(p.ok()) << p.status();
    one = probe->memory_bytes();
    EXPECT_EQ(one, SessionMemoryBytes(*p->session));
    // At least the K/V rows the model shape needs in F32, and not far more.
    const engine::ModelConfig& c = model_->backend->config();
    const int64_t rows = int64_t{p->session->sequence().kv()->capacity()} * c.n_layers * 2 *
                         c.n_kv_heads * c.head_dim * 4;
    EXPECT_GE(one, rows);
    EXPECT_LT(one, 2 * rows);
  }
  SessionManagerOptions options = Options(8);
  options.idle_timeout = absl::ZeroDuration();
  options.max_session_memory_bytes = 2 * one + one / 2;  // two sessions fit
  auto m = Manager(options);
  for (const char* id : {"a", "b", "c"}) ASSERT_TRUE(m->Attach(id, true, config_).ok());
  EXPECT_EQ(m->sessions_in_memory(), 3) << "attached sessions stay over the budget";
  EXPECT_EQ(m->memory_bytes(), 3 * one);
  m->Detach("a");  // over budget: the only detached one goes
  EXPECT_EQ(m->sessions_in_memory(), 2);
  EXPECT_EQ(m->memory_bytes(), 2 * one);
  m->Detach("b");
  now_ += absl::Seconds(1);
  m->Detach("c");
  EXPECT_EQ(m->sessions_in_memory(), 2);
  auto a = m->Attach("a", false, config_);  // b, least recently used, makes room
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE(a->restored);
  EXPECT_EQ(m->sessions_in_memory(), 2);
  auto c = m->Attach("c", false, config_);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->restored);
  auto b = m->Attach("b", false, config_);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_TRUE(b->restored);
  EXPECT_EQ(m->memory_bytes(), 3 * one);
  ASSERT_TRUE(m->Delete("probe").ok());
  m->Detach("a");
  ASSERT_TRUE(m->Delete("a").ok());
  EXPECT_EQ(m->memory_bytes(), 2 * one);
}

TEST_F(SessionManagerTest, CreateListDeleteAndLimit) {
  auto m = Manager(8, /*max_sessions=*/3);
  for (const char* id : {"s1", "s2", "s3"}) {
    auto info = m->CreateDetached(id, config_);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->session_id(), id);
    EXPECT_EQ(info->config().policy().kind(), v1::POLICY_STREAMING);
  }
  EXPECT_EQ(m->CreateDetached("s1", config_).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(m->CreateDetached("s4", config_).status().code(), absl::StatusCode::kResourceExhausted);

  v1::ListSessionsRequest request;
  request.set_page_size(2);
  auto page = m->List(request);
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->sessions_size(), 2);
  EXPECT_EQ(page->sessions(0).session_id(), "s1");
  request.set_page_token(page->next_page_token());
  page = m->List(request);
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->sessions_size(), 1);
  EXPECT_EQ(page->sessions(0).session_id(), "s3");
  EXPECT_TRUE(page->next_page_token().empty());

  ASSERT_TRUE(m->Delete("s2").ok());
  EXPECT_EQ(m->Info("s2").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(m->CreateDetached("s4", config_).ok()) << "a deleted session frees its slot";

  // A new manager on the same store counts what is stored.
  m.reset();
  auto fresh = Manager(8, 3);
  EXPECT_EQ(fresh->CreateDetached("s5", config_).status().code(),
            absl::StatusCode::kResourceExhausted);
  auto s1 = fresh->Attach("s1", false, config_);
  ASSERT_TRUE(s1.ok()) << s1.status();
  EXPECT_TRUE(s1->restored);
}

TEST_F(SessionManagerTest, TurnCheckpointsNeverWaitForTheStoreAndEndDurable) {
  SyncCountingStore counting(store_.get());
  auto created = SessionManager::Create(model_.get(), &counting, nullptr, Options(8));
  ASSERT_TRUE(created.ok()) << created.status();
  SessionManager& m = **created;
  auto a = m.Attach("a", true, config_);
  auto b = m.Attach("b", true, config_);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(counting.syncs.load(), 2) << "each created session is durable before Attach returns";

  // The disk stalls: turn ends must still return at once.
  counting.Hold();
  std::mutex mu;
  std::vector<std::string> told;
  const absl::Time start = absl::Now();
  for (auto* attached : {&*a, &*b}) {
    attached->session->FinishRound();  // what a turn's end leaves: dirty
    const std::string id = attached->session->id();
    m.CheckpointTurn(attached->session, [&mu, &told, id](const absl::Status& s) {
      EXPECT_TRUE(s.ok()) << s;
      std::lock_guard<std::mutex> lock(mu);
      told.push_back(id);
    });
  }
  EXPECT_LT(absl::Now() - start, absl::Seconds(5)) << "a turn end waited for the store";
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_TRUE(told.empty()) << "a turn heard it was over before its checkpoint was synced";
  }
  EXPECT_EQ(counting.syncs.load(), 2);
  counting.Release();
  auto told_count = [&] {
    std::lock_guard<std::mutex> lock(mu);
    return told.size();
  };
  for (int i = 0; i < 1000 && told_count() < 2; ++i) absl::SleepFor(absl::Milliseconds(5));
  {
    std::lock_guard<std::mutex> lock(mu);
    std::sort(told.begin(), told.end());
    EXPECT_EQ(told, (std::vector<std::string>{"a", "b"}));
  }
  EXPECT_GE(counting.syncs.load(), 3);
  EXPECT_LE(counting.syncs.load(), 4) << "at most one sync per writer thread";
  for (const char* id : {"a", "b"}) {
    auto info = store_->Info(id);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->rounds, 1) << id;
  }
  // A turn end with nothing new to write (a cancelled turn) writes nothing.
  const int before = counting.syncs.load();
  absl::Notification clean_done;
  m.CheckpointTurn(a->session, [&clean_done](const absl::Status& s) {
    EXPECT_TRUE(s.ok()) << s;
    clean_done.Notify();
  });
  ASSERT_TRUE(clean_done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(counting.syncs.load(), before) << "nothing was written: no sync";

  // Without options.sync the writers never sync (the store's own mode holds).
  SessionManagerOptions unsynced = Options(8);
  unsynced.sync = false;
  auto lax = SessionManager::Create(model_.get(), &counting, nullptr, unsynced);
  ASSERT_TRUE(lax.ok());
  auto c = (*lax)->Attach("c", true, config_);
  ASSERT_TRUE(c.ok());
  c->session->FinishRound();
  absl::Notification done;
  (*lax)->CheckpointTurn(c->session, [&done](const absl::Status& s) {
    EXPECT_TRUE(s.ok()) << s;
    done.Notify();
  });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(counting.syncs.load(), before);
}

TEST_F(SessionManagerTest, BackpressureHoldsNewTurnsWhileCheckpointsQueue) {
  SyncCountingStore counting(store_.get());
  SessionManagerOptions options = Options(8);
  options.checkpoint_buffer_bytes = 1;  // any queued checkpoint with rows is over
  std::atomic<int> rooms{0};
  options.on_checkpoint_room = [&rooms] { ++rooms; };
  auto created = SessionManager::Create(model_.get(), &counting, nullptr, options);
  ASSERT_TRUE(created.ok()) << created.status();
  SessionManager& m = **created;
  auto a = m.Attach("a", true, config_);
  ASSERT_TRUE(a.ok());
  // Give the session cells, so its checkpoint carries K/V rows.
  engine::GeneratorOptions gen;
  gen.max_tokens = 4;
  auto turn = a->session->Turn(*model_->tokenizer, {1, 2, 3, 4}, gen, {});
  ASSERT_TRUE(turn.ok()) << turn.status();
  EXPECT_TRUE(m.AdmitTurns());
  counting.Hold();
  absl::Notification done;
  m.CheckpointTurn(a->session, [&done](const absl::Status& s) { done.Notify(); });
  EXPECT_FALSE(m.AdmitTurns()) << "the writers are behind: new turns wait";
  counting.Release();
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  for (int i = 0; i < 1000 && rooms.load() == 0; ++i) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_TRUE(m.AdmitTurns());
  EXPECT_EQ(rooms.load(), 1) << "the waiting scheduler is woken once";
}

}  // namespace
}  // namespace sinkserve::service
