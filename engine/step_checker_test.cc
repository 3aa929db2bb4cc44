#include "engine/step_checker.h"

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace sinkserve::engine {
namespace {

// StepChecker only compares storages by address; a storage that holds nothing.
class EmptyKv : public KvStorage {
 public:
  int capacity() const override { return 8; }
  KvDtype dtype() const override { return KvDtype::kF32; }
  absl::Status MoveSlots(absl::Span<const std::pair<int32_t, int32_t>>) override {
    return absl::UnimplementedError("empty");
  }
  absl::Status ExportSlots(absl::Span<const int32_t>, std::string*) const override {
    return absl::UnimplementedError("empty");
  }
  absl::Status ImportSlots(absl::Span<const int32_t>, std::string_view) override {
    return absl::UnimplementedError("empty");
  }
};

constexpr int kCapacity = 8;

class StepCheckerTest : public ::testing::Test {
 protected:
  // Checks every sequence of `batch` in order, as a backend does.
  absl::Status CheckAll(const std::vector<SequenceStep>& batch) {
    for (size_t s = 0; s < batch.size(); ++s) {
      absl::Status status = checker_.Check(batch, s, kCapacity);
      if (!status.ok()) return status;
    }
    return absl::OkStatus();
  }

  SequenceStep Step(KvStorage* kv, absl::Span<const int32_t> context,
                    absl::Span<const int32_t> slots) {
    return {kv, context, context, tokens_.subspan(0, slots.size()), slots, slots};
  }

  StepChecker checker_{/*vocab_size=*/100, /*max_position=*/16};
  EmptyKv a_, b_;
  const std::vector<int32_t> token_ids_ = {1, 2, 3, 4};
  absl::Span<const int32_t> tokens_ = token_ids_;
};

TEST_F(StepCheckerTest, AcceptsAWellFormedBatch) {
  const std::vector<int32_t> context = {0, 1, 1}, slots = {2, 3};
  // The same slot numbers in another sequence's storage are its own slots.
  EXPECT_TRUE(CheckAll({Step(&a_, context, slots), Step(&b_, context, slots)}).ok());
  // The marks of one call do not leak into the next: slots written above
  // are context now.
  const std::vector<int32_t> now = {0, 1};
  EXPECT_TRUE(CheckAll({Step(&a_, slots, now)}).ok());
}

TEST_F(StepCheckerTest, RejectsWhatWouldReadOrWriteTheWrongRows) {
  const std::vector<int32_t> s0 = {0}, s1 = {1}, s01 = {0, 1}, s00 = {0, 0}, far = {kCapacity},
                             neg = {-1};
  struct Case {
    const char* what;
    std::vector<SequenceStep> batch;
    absl::StatusCode code;
    const char* message;
  };
  const int32_t bad_id[1] = {100}, bad_pos[1] = {16};
  const std::vector<Case> cases = {
      {"storage twice",
       {Step(&a_, {}, s0), Step(&a_, {}, s0)},
       absl::StatusCode::kInvalidArgument,
       "sequences 0 and 1 share one KV storage"},
      {"token slot twice",
       {Step(&a_, {}, s00)},
       absl::StatusCode::kInvalidArgument,
       "sequence 0: token slot 0 appears twice in one step"},
      {"context slot written",
       {Step(&b_, {}, s0), Step(&a_, s01, s0)},
       absl::StatusCode::kInvalidArgument,
       "sequence 1: context slot 0 is also a new token's slot"},
      {"token slot beyond",
       {Step(&a_, {}, far)},
       absl::StatusCode::kOutOfRange,
       "sequence 0: token slot 8 outside KV storage of capacity 8"},
      {"context slot negative",
       {{&a_, neg, s0, tokens_.subspan(0, 1), s1, s1}},
       absl::StatusCode::kOutOfRange,
       "sequence 0: context slot -1 outside KV storage of capacity 8"},
      {"id outside vocab",
       {{&a_, {}, {}, bad_id, s0, s0}},
       absl::StatusCode::kInvalidArgument,
       "sequence 0: token 100 outside vocab of 100"},
      {"position too far",
       {{&a_, {}, {}, tokens_.subspan(0, 1), s0, bad_pos}},
       absl::StatusCode::kInvalidArgument,
       "sequence 0: position 16 outside [0, 16)"},
      {"context sizes",
       {{&a_, s01, s0, {}, {}, {}}},
       absl::StatusCode::kInvalidArgument,
       "sequence 0: 2 context slots but 1 positions"},
      {"token sizes",
       {{&a_, {}, {}, tokens_.subspan(0, 1), s01, s0}},
       absl::StatusCode::kInvalidArgument,
       "sequence 0: 1 tokens, 2 slots, 1 positions"},
  };
  for (const Case& c : cases) {
    absl::Status status = CheckAll(c.batch);
    EXPECT_EQ(status.code(), c.code) << c.what << ": " << status;
    EXPECT_EQ(std::string(status.message()), c.message) << c.what;
  }
  // Rejected steps leave nothing behind.
  EXPECT_TRUE(CheckAll({Step(&a_, {}, s01)}).ok());
}

}  // namespace
}  // namespace sinkserve::engine
