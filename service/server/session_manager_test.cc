#include "service/server/session_manager.h"

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "memory/rocksdb_session_store.h"

namespace sinkserve::service {
namespace {

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

  std::unique_ptr<SessionManager> Manager(int in_memory, int64_t max_sessions = 0) {
    SessionManagerOptions options;
    options.max_sessions_in_memory = in_memory;
    options.max_sessions = max_sessions;
    options.default_policy = *memory::PolicyConfig::Parse("streaming(4,60)");
    auto manager = SessionManager::Create(model_.get(), store_.get(), nullptr, options);
    EXPECT_TRUE(manager.ok()) << manager.status();
    return std::move(*manager);
  }

  static absl::StatusCode Code(const absl::StatusOr<AttachResult>& r) { return r.status().code(); }

  std::unique_ptr<ServingModel> model_;
  std::filesystem::path dir_;
  std::unique_ptr<memory::RocksDbSessionStore> store_;
  v1::SessionConfig config_;
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

}  // namespace
}  // namespace sinkserve::service
