// Shared by the session store tests: temporary directories, a raw RocksDB
// view of a store (to damage it), and a fixture owning one store.
#ifndef SINKSERVE_MEMORY_STORE_TEST_UTIL_H_
#define SINKSERVE_MEMORY_STORE_TEST_UTIL_H_

#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "memory/rocksdb_session_store.h"
#include "memory/session_state.h"
#include "memory/session_testing.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"

namespace sinkserve::memory::store_testing {

inline std::string TempDir() {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string tmpl = std::string(base ? base : "/tmp") + "/store_test.XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) std::abort();
  return tmpl;
}

// The database opened with plain RocksDB, to damage records like a failing
// disk or a buggy tool would.
class RawDb {
 public:
  explicit RawDb(const std::string& dir) {
    std::vector<rocksdb::ColumnFamilyDescriptor> cfs = {
        {rocksdb::kDefaultColumnFamilyName, {}},
        {std::string(RocksDbSessionStore::kMetaColumnFamily), {}},
        {std::string(RocksDbSessionStore::kKvColumnFamily), {}}};
    rocksdb::DB* db = nullptr;
    const rocksdb::Status s =
        rocksdb::DB::Open(rocksdb::DBOptions(), dir, cfs, &handles_, &db);
    EXPECT_TRUE(s.ok()) << s.ToString();
    db_.reset(db);
  }
  ~RawDb() {
    for (auto* h : handles_) db_->DestroyColumnFamilyHandle(h);
    EXPECT_TRUE(db_->Close().ok());
  }
  rocksdb::ColumnFamilyHandle* meta() { return handles_[1]; }
  rocksdb::ColumnFamilyHandle* kv() { return handles_[2]; }
  rocksdb::ColumnFamilyHandle* def() { return handles_[0]; }
  std::string Get(rocksdb::ColumnFamilyHandle* cf, const std::string& key) {
    std::string v;
    EXPECT_TRUE(db_->Get(rocksdb::ReadOptions(), cf, key, &v).ok()) << key;
    return v;
  }
  void Put(rocksdb::ColumnFamilyHandle* cf, const std::string& key,
           const std::string& value) {
    ASSERT_TRUE(db_->Put(rocksdb::WriteOptions(), cf, key, value).ok());
  }
  void Delete(rocksdb::ColumnFamilyHandle* cf, const std::string& key) {
    ASSERT_TRUE(db_->Delete(rocksdb::WriteOptions(), cf, key).ok());
  }

 private:
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
};

class SessionStoreTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = TempDir(); }
  void TearDown() override {
    store_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  RocksDbSessionStore& Open(RocksDbSessionStoreOptions options = {}) {
    store_.reset();
    absl::StatusOr<std::unique_ptr<RocksDbSessionStore>> s =
        RocksDbSessionStore::Open(dir_ + "/db", options);
    EXPECT_TRUE(s.ok()) << s.status();
    if (!s.ok()) std::abort();
    store_ = *std::move(s);
    return *store_;
  }

  // A random state with a few MB of K/V rows.
  static SessionState BigState(uint64_t seed, const std::string& id) {
    std::mt19937_64 rng(seed);
    RandomStateOptions o;
    o.n_layers = 8;
    o.kv_dim = 256;
    o.cells = 300;
    o.capacity = 320;
    return RandomState(rng, id, o);
  }

  std::string dir_;
  std::unique_ptr<RocksDbSessionStore> store_;
};

inline void ExpectLoads(const SessionStore& store, const SessionState& want) {
  absl::StatusOr<LoadedSession> got =
      store.Load(want.id, want.model_fingerprint);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(Difference(got->state, want), "") << want.id;
}

inline void RunChain(RocksDbSessionStore& store, const std::string& id,
                     int steps, bool wait_for_background) {
  SimOptions sim;
  SessionState prev = SimStateAt(id, sim, 0);
  absl::StatusOr<CheckpointResult> put = store.Put(prev);
  ASSERT_TRUE(put.ok()) << put.status();
  uint64_t version = put->version;
  for (int64_t step = 1; step <= steps; ++step) {
    SessionState next = SimStateAt(id, sim, step);
    absl::StatusOr<SessionDelta> delta = Diff(prev, next);
    ASSERT_TRUE(delta.ok());
    absl::StatusOr<CheckpointResult> r = store.Append(id, version, *delta);
    ASSERT_TRUE(r.ok()) << r.status();
    version = r->version;
    if (wait_for_background) store.WaitForCompactions();
    ExpectLoads(store, next);
    prev = std::move(next);
  }
}

}  // namespace sinkserve::memory::store_testing

#endif  // SINKSERVE_MEMORY_STORE_TEST_UTIL_H_
