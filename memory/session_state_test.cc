#include "memory/session_state.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "memory/kv_cache.h"
#include "memory/session_testing.h"

namespace sinkserve::memory {
namespace {

using store_testing::Difference;
using ::testing::HasSubstr;

TEST(SessionStateTest, RandomStatesAreValid) {
  std::mt19937_64 rng(1);
  for (int i = 0; i < 20; ++i) {
    SessionState s = store_testing::RandomState(rng, "s" + std::to_string(i));
    ASSERT_TRUE(s.Validate().ok()) << s.Validate();
    // KvCache itself accepts it.
    EXPECT_TRUE(KvCache::Restore(s.policy, s.capacity, s.cache).ok());
  }
}

TEST(SessionStateTest, ValidateNamesTheProblem) {
  std::mt19937_64 rng(2);
  SessionState s = store_testing::RandomState(rng, "v");
  struct Case {
    const char* want;
    void (*mutate)(SessionState*);
  };
  const Case cases[] = {
      {"session id", [](SessionState* x) { x->id = "has space"; }},
      {"fingerprint", [](SessionState* x) { x->model_fingerprint.clear(); }},
      {"arrival", [](SessionState* x) { x->cache.cells[3].arrival = 0; }},
      {"slot",
       [](SessionState* x) {
         x->cache.cells[3].slot = x->cache.cells[2].slot;
       }},
      {"slot", [](SessionState* x) { x->cache.cells[3].slot = x->capacity; }},
      {"NaN",
       [](SessionState* x) {
         x->cache.cells[3].score = std::numeric_limits<float>::quiet_NaN();
       }},
      {"kv holds", [](SessionState* x) { x->kv.pop_back(); }},
      {"K/V shape", [](SessionState* x) { x->kv_shape.n_layers = 0; }},
      {"tokens_seen", [](SessionState* x) { x->cache.tokens_seen = 1; }},
  };
  for (const Case& c : cases) {
    SessionState bad = s.Copy();
    c.mutate(&bad);
    const absl::Status st = bad.Validate();
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << c.want;
    EXPECT_THAT(std::string(st.message()), HasSubstr(c.want));
  }
}

TEST(SessionStateTest, EqualityIsBitExact) {
  std::mt19937_64 rng(3);
  SessionState a = store_testing::RandomState(rng, "e");
  SessionState b = a.Copy();
  EXPECT_TRUE(a == b);
  b.cache.cells[1].score = 0.0f;  // was -0.0f: == on floats would not notice
  EXPECT_FALSE(a == b);
}

TEST(SessionStateTest, DeltasReplayToTheFinalState) {
  store_testing::SimOptions o;
  SessionState s = store_testing::SimStateAt("r", o, 0);
  SessionState applied = s.Copy();
  StateReplayer replayer(s.Copy(), /*with_kv=*/true);
  for (int64_t step = 1; step <= 40; ++step) {
    SessionState next = store_testing::SimStateAt("r", o, step);
    absl::StatusOr<SessionDelta> delta = Diff(s, next);
    ASSERT_TRUE(delta.ok()) << delta.status();
    EXPECT_TRUE(delta->rewritten.empty());  // sirllm never rewrites rows
    ASSERT_TRUE(ApplyDelta(*delta, &applied).ok());
    ASSERT_EQ(Difference(applied, next), "") << "step " << step;
    ASSERT_TRUE(replayer.Apply(*delta, delta->kv).ok());
    s = std::move(next);
  }
  EXPECT_EQ(Difference(std::move(replayer).Finish(), s), "");
}

TEST(SessionStateTest, DiffMetadataPlusExportedRowsEqualsDiff) {
  store_testing::SimOptions o;
  SessionState prev = store_testing::SimStateAt("m", o, 5);
  SessionState next = store_testing::SimStateAt("m", o, 6);
  absl::StatusOr<SessionDelta> full = Diff(prev, next);
  absl::StatusOr<SessionDelta> meta = DiffMetadata(prev, next);
  ASSERT_TRUE(full.ok() && meta.ok());
  // What a session manager does: export the rows of the slots it is told.
  meta->kv = store_testing::SimRows(next, meta->added);
  EXPECT_EQ(meta->KvSlots().size(), meta->added.size());
  EXPECT_TRUE(*meta == *full);
}

TEST(SessionStateTest, RewrittenRowsAreCarried) {
  store_testing::SimOptions o;
  SessionState prev = store_testing::SimStateAt("w", o, 3);
  SessionState next = prev.Copy();
  // Recompute re-encodes kept cells: same metadata, new rows for cells 5, 9.
  const int64_t n = static_cast<int64_t>(next.cache.cells.size());
  const int64_t row = next.kv_shape.row_bytes();
  for (int64_t block = 0; block < 2 * next.kv_shape.n_layers; ++block) {
    next.kv[(block * n + 5) * row] ^= 1;
    next.kv[(block * n + 9) * row + 3] ^= 1;
  }
  next.cache.cells[9].score = 1.5f;
  absl::StatusOr<SessionDelta> delta = Diff(prev, next);
  ASSERT_TRUE(delta.ok()) << delta.status();
  ASSERT_EQ(delta->rewritten.size(), 2u);
  EXPECT_TRUE(delta->updated.empty());  // cell 9's score rides in rewritten
  EXPECT_EQ(delta->kv.size(),
            2 * static_cast<size_t>(next.kv_shape.cell_bytes()));
  ASSERT_TRUE(ApplyDelta(*delta, &prev).ok());
  EXPECT_EQ(Difference(prev, next), "");
}

TEST(SessionStateTest, BadDeltasAreRefusedAndLeaveTheStateAlone) {
  store_testing::SimOptions o;
  SessionState prev = store_testing::SimStateAt("b", o, 7);
  SessionState next = store_testing::SimStateAt("b", o, 8);
  absl::StatusOr<SessionDelta> good = Diff(prev, next);
  ASSERT_TRUE(good.ok());
  struct Case {
    const char* want;
    void (*mutate)(SessionDelta*);
  };
  const Case cases[] = {
      {"does not hold", [](SessionDelta* d) { d->evicted.push_back(1 << 30); }},
      {"does not hold",
       [](SessionDelta* d) {
         Cell c = d->added.front();
         c.arrival = -5;
         d->updated.insert(d->updated.begin(), c);
       }},
      {"before tokens_seen",
       [](SessionDelta* d) { d->added.front().arrival = 0; }},
      {"kv holds", [](SessionDelta* d) { d->kv.push_back('x'); }},
      {"not strictly ascending",
       [](SessionDelta* d) { d->evicted.push_back(d->evicted.back()); }},
      {"goes backwards", [](SessionDelta* d) { d->tokens_seen = 0; }},
      {"slot", [](SessionDelta* d) { d->added.back().slot = -1; }},
      {"pending token",
       [](SessionDelta* d) {
         d->pending = std::vector<PendingToken>{{-1, 0.0f}};
       }},
      {"pending token",
       [](SessionDelta* d) {
         d->pending = std::vector<PendingToken>{{3, std::nanf("")}};
       }},
  };
  for (const Case& c : cases) {
    SessionDelta bad = good->Copy();
    c.mutate(&bad);
    SessionState s = prev.Copy();
    const absl::Status st = ApplyDelta(bad, &s);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << c.want;
    EXPECT_THAT(std::string(st.message()), HasSubstr(c.want));
    EXPECT_EQ(Difference(s, prev), "") << c.want;
  }
}

TEST(SessionStateTest, PendingTokensTravelInDeltas) {
  store_testing::SimOptions o;
  // Step 2 has a pending token, step 3 none, step 4 one again.
  SessionState s2 = store_testing::SimStateAt("p", o, 2);
  SessionState s3 = store_testing::SimStateAt("p", o, 3);
  SessionState s4 = store_testing::SimStateAt("p", o, 4);
  ASSERT_EQ(s2.pending.size(), 1u);
  ASSERT_TRUE(s3.pending.empty());
  absl::StatusOr<SessionDelta> d23 = Diff(s2, s3);
  absl::StatusOr<SessionDelta> d34 = Diff(s3, s4);
  ASSERT_TRUE(d23.ok() && d34.ok());
  ASSERT_TRUE(d23->pending.has_value());
  EXPECT_TRUE(d23->pending->empty());
  SessionState s = s2.Copy();
  ASSERT_TRUE(ApplyDelta(*d23, &s).ok());
  EXPECT_TRUE(s == s3);
  ASSERT_TRUE(ApplyDelta(*d34, &s).ok());
  EXPECT_TRUE(s == s4);
  // Unchanged pending tokens are not repeated in a delta.
  absl::StatusOr<SessionDelta> same = DiffMetadata(s4, s4);
  ASSERT_TRUE(same.ok());
  EXPECT_FALSE(same->pending.has_value());
  SessionState bad = s4.Copy();
  bad.pending.push_back({7, std::nanf("")});
  EXPECT_THAT(std::string(bad.Validate().message()),
              HasSubstr("pending token 1"));
}

TEST(SessionStateTest, DiffRefusesAnotherSession) {
  store_testing::SimOptions o;
  SessionState a = store_testing::SimStateAt("a", o, 1);
  SessionState b = a.Copy();
  b.model_fingerprint = "other";
  EXPECT_EQ(DiffMetadata(a, b).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sinkserve::memory
