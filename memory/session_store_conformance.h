// The behaviour every SessionStore must have, as one parametrized gtest suite
// (session_store_conformance.cc). A test program links that file and
// instantiates the suite with a harness for its store:
//
//   INSTANTIATE_TEST_SUITE_P(RocksDb, SessionStoreConformance,
//                            ::testing::Values(&MakeRocksDbHarness));
//
// Store-specific behaviour (RocksDB's disk-full recovery, RADOS fencing and
// outages) stays in each store's own tests.
#ifndef SINKSERVE_MEMORY_SESSION_STORE_CONFORMANCE_H_
#define SINKSERVE_MEMORY_SESSION_STORE_CONFORMANCE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "memory/session_store.h"

namespace sinkserve::memory::store_testing {

// The knobs every store has, in its own option struct.
struct StoreTuning {
  // Default: 16 (fold after that many deltas; 0 never).
  int compact_after_deltas = 16;
  // Default: true.
  bool background_compaction = true;
  // Default: 4 MiB.
  uint64_t kv_chunk_bytes = uint64_t{4} << 20;
};

// One store's data for one test: every Open is a new store instance on the
// same (initially empty) data.
class StoreHarness {
 public:
  virtual ~StoreHarness() = default;
  virtual std::unique_ptr<SessionStore> Open(const StoreTuning& tuning) = 0;
  // Waits for background folds of `store` (one Open returned).
  virtual void WaitForCompactions(SessionStore& store) = 0;
  // Damages record `seq` (part 0: the full state or delta) of session `id`
  // by flipping a byte in its middle, the way a failing disk or a buggy
  // tool would. No store of this harness is open while it runs.
  virtual void DamageRecord(const std::string& id, uint64_t seq) = 0;
};

// Returns nullptr (and the suite skips) where the store cannot run.
using HarnessFactory = std::unique_ptr<StoreHarness> (*)();

class SessionStoreConformance : public ::testing::TestWithParam<HarnessFactory> {
 protected:
  void SetUp() override {
    harness_ = GetParam()();
    // A factory returns none where its store cannot run here (it says why).
    if (harness_ == nullptr) GTEST_SKIP() << "no store to test here";
  }
  void TearDown() override {
    store_.reset();
    harness_.reset();
  }
  SessionStore& Open(const StoreTuning& tuning = {}) {
    store_.reset();
    tuning_ = tuning;
    store_ = harness_->Open(tuning);
    if (store_ == nullptr) std::abort();
    return *store_;
  }
  // DamageRecord with the store closed, then the same store opened again.
  SessionStore& Damage(const std::string& id, uint64_t seq) {
    store_.reset();
    harness_->DamageRecord(id, seq);
    return Open(tuning_);
  }

  std::unique_ptr<StoreHarness> harness_;
  std::unique_ptr<SessionStore> store_;
  StoreTuning tuning_;
};

}  // namespace sinkserve::memory::store_testing

#endif  // SINKSERVE_MEMORY_SESSION_STORE_CONFORMANCE_H_
