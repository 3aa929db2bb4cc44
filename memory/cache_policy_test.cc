#include "memory/cache_policy.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sinkserve::memory {
namespace {

using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

constexpr float kInf = std::numeric_limits<float>::infinity();

PolicyConfig Full() { return PolicyConfig{}; }
PolicyConfig Window(int w) {
  PolicyConfig c;
  c.kind = PolicyKind::kWindow;
  c.window = w;
  return c;
}
PolicyConfig Streaming(int s, int w) {
  PolicyConfig c;
  c.kind = PolicyKind::kStreaming;
  c.sinks = s;
  c.window = w;
  return c;
}
PolicyConfig SirLlm(int s, int e, int w, float decay = 1.0f) {
  PolicyConfig c;
  c.kind = PolicyKind::kSirLlm;
  c.sinks = s;
  c.entropy = e;
  c.window = w;
  c.decay = decay;
  return c;
}
PolicyConfig Recompute(int w) {
  PolicyConfig c;
  c.kind = PolicyKind::kRecompute;
  c.window = w;
  return c;
}

// Cells with the given scores, arrivals 0..n-1 (slots are irrelevant).
std::vector<Cell> CellsWithScores(const std::vector<float>& scores) {
  std::vector<Cell> cells(scores.size());
  for (size_t i = 0; i < scores.size(); ++i) {
    cells[i].token = static_cast<int32_t>(100 + i);
    cells[i].score = scores[i];
    cells[i].arrival = static_cast<int64_t>(i);
    cells[i].slot = static_cast<int32_t>(i);
  }
  return cells;
}

std::vector<Cell> CellsOfSize(int n) {
  return CellsWithScores(std::vector<float>(n, 1.0f));
}

std::vector<int32_t> Range(int begin, int end) {
  std::vector<int32_t> v(end - begin);
  std::iota(v.begin(), v.end(), begin);
  return v;
}

TEST(PolicyKindTest, NamesRoundTrip) {
  for (PolicyKind kind :
       {PolicyKind::kFull, PolicyKind::kWindow, PolicyKind::kStreaming,
        PolicyKind::kSirLlm, PolicyKind::kRecompute}) {
    absl::StatusOr<PolicyKind> parsed = ParsePolicyKind(PolicyKindName(kind));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, kind);
  }
  EXPECT_EQ(*ParsePolicyKind(" StreAming "), PolicyKind::kStreaming);
  EXPECT_THAT(ParsePolicyKind("lru").status().message(),
              HasSubstr("unknown cache policy 'lru'"));
}

struct ValidateCase {
  std::string name;
  PolicyConfig config;
  std::string error;  // "" = valid
};

TEST(PolicyConfigTest, Validate) {
  PolicyConfig nan_decay = SirLlm(4, 8, 8);
  nan_decay.decay = std::numeric_limits<float>::quiet_NaN();
  PolicyConfig full_with_junk = Full();
  full_with_junk.window = -7;  // unused by full: not checked
  PolicyConfig window_with_junk = Window(8);
  window_with_junk.sinks = -1;  // unused by window
  window_with_junk.decay = 7;
  const std::vector<ValidateCase> cases = {
      {"full", Full(), ""},
      {"full ignores unused fields", full_with_junk, ""},
      {"window", Window(1), ""},
      {"window ignores unused fields", window_with_junk, ""},
      {"window 0", Window(0), "window must be in [1, "},
      {"window negative", Window(-3), "got -3"},
      {"streaming", Streaming(4, 252), ""},
      {"streaming no sinks", Streaming(0, 8), ""},
      {"streaming window 0", Streaming(4, 0), "window must be in [1, "},
      {"streaming sinks negative", Streaming(-1, 8), "sinks must be in [0, "},
      {"sirllm", SirLlm(4, 64, 188, 0.9f), ""},
      {"sirllm decay 1", SirLlm(4, 64, 188, 1.0f), ""},
      {"sirllm entropy 0", SirLlm(4, 0, 188), "entropy must be in [1, "},
      {"sirllm window 0", SirLlm(4, 8, 0), "window must be in [1, "},
      {"sirllm decay 0", SirLlm(4, 8, 8, 0.0f), "decay must be in (0, 1]"},
      {"sirllm decay > 1", SirLlm(4, 8, 8, 1.5f), "decay must be in (0, 1]"},
      {"sirllm decay negative", SirLlm(4, 8, 8, -0.5f), "decay must be in"},
      {"sirllm decay NaN", nan_decay, "decay must be in (0, 1]"},
      {"recompute", Recompute(256), ""},
      {"recompute window 0", Recompute(0), "window must be in [1, "},
      {"window too large", Window(kMaxPolicyCells + 1), "window must be in"},
      {"budget too large", Streaming(kMaxPolicyCells, kMaxPolicyCells),
       "budget must be in"},
  };
  for (const ValidateCase& c : cases) {
    const absl::Status status = c.config.Validate();
    if (c.error.empty()) {
      EXPECT_TRUE(status.ok()) << c.name << ": " << status;
    } else {
      EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.name;
      EXPECT_THAT(status.message(), HasSubstr(c.error)) << c.name;
    }
  }
}

TEST(PolicyConfigTest, Budget) {
  EXPECT_EQ(Full().Budget(), std::nullopt);
  EXPECT_EQ(Window(7).Budget(), 7);
  EXPECT_EQ(Streaming(4, 252).Budget(), 256);
  EXPECT_EQ(SirLlm(4, 64, 188).Budget(), 256);
  EXPECT_EQ(Recompute(31).Budget(), 31);
}

TEST(PolicyConfigTest, ToString) {
  const std::vector<std::pair<PolicyConfig, std::string>> cases = {
      {Full(), "full"},
      {Window(512), "window(512)"},
      {Streaming(4, 252), "streaming(4,252)"},
      {SirLlm(4, 64, 188, 0.9f), "sirllm(4,64,188,0.9)"},
      {SirLlm(0, 1, 1, 1.0f), "sirllm(0,1,1,1)"},
      {Recompute(256), "recompute(256)"},
  };
  for (const auto& [config, text] : cases) {
    EXPECT_EQ(config.ToString(), text);
  }
}

struct ParseCase {
  std::string spec;
  PolicyConfig want;
  std::string error;  // "" = parses to `want`
};

TEST(PolicyConfigTest, Parse) {
  const std::vector<ParseCase> cases = {
      {"full", Full(), ""},
      {"full()", Full(), ""},
      {"window:window=512", Window(512), ""},
      {"window(512)", Window(512), ""},
      {"streaming:sinks=4,window=252", Streaming(4, 252), ""},
      {"streaming:window=252", Streaming(4, 252), ""},  // default sinks = 4
      {" streaming : window = 10 , sinks = 2 ", Streaming(2, 10), ""},
      {"streaming(4,252)", Streaming(4, 252), ""},
      {"sirllm:sinks=4,entropy=64,window=188,decay=0.9",
       SirLlm(4, 64, 188, 0.9f), ""},
      {"sirllm:entropy=8,window=8", SirLlm(4, 8, 8, 1.0f), ""},
      {"sirllm(4,64,188,0.9)", SirLlm(4, 64, 188, 0.9f), ""},
      {"recompute:window=64", Recompute(64), ""},
      {"recompute(64)", Recompute(64), ""},
      {"", {}, "empty cache policy"},
      {"lru", {}, "unknown cache policy 'lru'"},
      {"window", {}, "window must be in [1, "},
      {"streaming:sinks=4", {}, "window must be in [1, "},
      {"streaming:window=8,window=9", {}, "window given twice"},
      {"streaming:window=8,color=red", {}, "unknown key 'color'"},
      {"streaming:window", {}, "expected key=value"},
      {"streaming:window=abc", {}, "'abc' is not an integer"},
      {"streaming:window=99999999999", {}, "not an integer in int range"},
      {"streaming:entropy=3,window=8", {}, "streaming takes no entropy"},
      {"window:sinks=4,window=8", {}, "window takes no sinks"},
      {"full:window=8", {}, "full takes no window"},
      {"sirllm:entropy=8,window=8,decay=x", {}, "decay: 'x' is not a number"},
      {"sirllm:entropy=8,window=8,decay=0", {}, "decay must be in (0, 1]"},
      {"streaming(4)", {}, "streaming takes 2 argument(s), got 1"},
      {"streaming(4,252", {}, "missing ')'"},
      {"full(3)", {}, "full takes 0 argument(s), got 1"},
      {"sirllm(4,8,8)", SirLlm(4, 8, 8, 1.0f), ""},  // decay left out: none
      {"sirllm(4,8)", {}, "sirllm takes 4 argument(s), got 2"},
  };
  for (const ParseCase& c : cases) {
    absl::StatusOr<PolicyConfig> got = PolicyConfig::Parse(c.spec);
    if (c.error.empty()) {
      ASSERT_TRUE(got.ok()) << "'" << c.spec << "': " << got.status();
      EXPECT_EQ(*got, c.want) << c.spec << " -> " << got->ToString();
    } else {
      ASSERT_FALSE(got.ok()) << "'" << c.spec << "' parsed";
      EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(got.status().message(), HasSubstr(c.error)) << c.spec;
    }
  }
}

TEST(PolicyConfigTest, ParseReadsToStringBack) {
  for (const PolicyConfig& config :
       {Full(), Window(1), Streaming(0, 3), Streaming(4, 252),
        SirLlm(4, 64, 188, 0.9f), SirLlm(1, 2, 3, 0.123456789f),
        SirLlm(2, 2, 2, 1e-7f), Recompute(1000)}) {
    absl::StatusOr<PolicyConfig> parsed =
        PolicyConfig::Parse(config.ToString());
    ASSERT_TRUE(parsed.ok()) << config.ToString() << ": " << parsed.status();
    EXPECT_EQ(*parsed, config) << config.ToString();
  }
}

TEST(PolicyConfigTest, FromFlags) {
  // Flags always carry values; those the kind does not use fall back to the
  // defaults so that equal policies compare equal.
  EXPECT_EQ(*PolicyConfig::FromFlags("full", 4, 252, 64, 0.9), Full());
  EXPECT_EQ(*PolicyConfig::FromFlags("window", 4, 252, 64, 0.9), Window(252));
  EXPECT_EQ(*PolicyConfig::FromFlags("streaming", 4, 252, 64, 0.9),
            Streaming(4, 252));
  EXPECT_EQ(*PolicyConfig::FromFlags("sirllm", 4, 188, 64, 0.9),
            SirLlm(4, 64, 188, 0.9f));
  EXPECT_EQ(*PolicyConfig::FromFlags("recompute", 0, 64, 0, 0), Recompute(64));
  EXPECT_EQ(*PolicyConfig::FromFlags("window", -1, 8, -1, -1), Window(8));

  const std::vector<std::pair<absl::StatusOr<PolicyConfig>, std::string>>
      errors = {
          {PolicyConfig::FromFlags("lru", 4, 8, 0, 1), "unknown cache policy"},
          {PolicyConfig::FromFlags("window", 4, 0, 0, 1), "window must be"},
          {PolicyConfig::FromFlags("streaming", -2, 8, 0, 1), "sinks must be"},
          {PolicyConfig::FromFlags("streaming", 4, int64_t{1} << 40, 0, 1),
           "window: '1099511627776' is not an integer in int range"},
          {PolicyConfig::FromFlags("sirllm", 4, 8, 0, 0.5), "entropy must be"},
          {PolicyConfig::FromFlags("sirllm", 4, 8, 8, 0.0), "decay must be"},
          {PolicyConfig::FromFlags("sirllm", 4, 8, 8, 1e300), "decay must be"},
      };
  for (const auto& [got, error] : errors) {
    ASSERT_FALSE(got.ok()) << error;
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(got.status().message(), HasSubstr(error));
  }
}

struct SelectCase {
  std::string name;
  PolicyConfig config;
  std::vector<float> scores;  // one cell per score
  std::vector<int32_t> want;
};

TEST(SelectKeptTest, Tables) {
  const std::vector<SelectCase> cases = {
      {"full keeps all", Full(), {1, 2, 3, 4, 5}, {0, 1, 2, 3, 4}},
      {"empty", Streaming(4, 4), {}, {}},
      {"window keeps the last W", Window(3), {9, 9, 9, 0, 0, 0}, {3, 4, 5}},
      {"window 1", Window(1), {kInf, 1, 2}, {2}},
      {"window drops BOS", Window(2), {kInf, 1, 2, 3}, {2, 3}},
      {"streaming: sinks + last W",
       Streaming(2, 3),
       {0, 0, 0, 0, 0, 0, 0, 0},
       {0, 1, 5, 6, 7}},
      {"streaming one over budget",
       Streaming(2, 3),
       {0, 0, 0, 0, 0, 0},
       {0, 1, 3, 4, 5}},
      {"streaming without sinks is a window",
       Streaming(0, 2),
       {5, 4, 3, 2},
       {2, 3}},
      {"streaming ignores scores", Streaming(1, 1), {0, 9, 9, 0}, {0, 3}},
      // Middle = cells 1..5 with scores 5 1 7 3 9: the top two are 5 (9) and
      // 3 (7).
      {"sirllm keeps the highest scores",
       SirLlm(1, 2, 2),
       {kInf, 5, 1, 7, 3, 9, 2, 0},
       {0, 3, 5, 6, 7}},
      {"sirllm ties keep the older",
       SirLlm(1, 2, 1),
       {kInf, 2, 2, 2, 2, 0},
       {0, 1, 2, 5}},
      {"sirllm partial tie keeps the older",
       SirLlm(0, 2, 1),
       {1, 3, 1, 3, 3, 0},
       {1, 3, 5}},
      {"sirllm keeps BOS even without sinks",
       SirLlm(0, 1, 1),
       {kInf, 9, 9, 0},
       {0, 3}},
      {"sirllm window cells need no score",
       SirLlm(1, 1, 2),
       {kInf, 1, 2, -5, -5},
       {0, 2, 3, 4}},
      {"sirllm negative and -inf scores",
       SirLlm(0, 2, 1),
       {-1, -kInf, -0.5f, -2, 0},
       {0, 2, 4}},
      {"sirllm NaN ranks lowest",
       SirLlm(0, 1, 1),
       {std::numeric_limits<float>::quiet_NaN(), -1, 0},
       {1, 2}},
      {"recompute keeps the last W", Recompute(2), {kInf, 1, 2, 3, 4}, {3, 4}},
  };
  for (const SelectCase& c : cases) {
    const std::vector<Cell> cells = CellsWithScores(c.scores);
    EXPECT_THAT(SelectKept(cells, c.config), ElementsAreArray(c.want))
        << c.name;
  }
}

TEST(SelectKeptTest, EveryPolicyEqualsFullUpToItsBudget) {
  for (const PolicyConfig& config :
       {Window(1), Window(5), Streaming(4, 3), Streaming(0, 6), SirLlm(4, 3, 2),
        SirLlm(0, 1, 1), Recompute(6)}) {
    const int budget = *config.Budget();
    for (int n = 0; n <= budget; ++n) {
      std::vector<float> scores(n);
      for (int i = 0; i < n; ++i) scores[i] = static_cast<float>((i * 7) % 5);
      const std::vector<Cell> cells = CellsWithScores(scores);
      EXPECT_EQ(SelectKept(cells, config), SelectKept(cells, Full()))
          << config.ToString() << " n=" << n;
      EXPECT_EQ(SelectKept(cells, config), Range(0, n));
    }
    // And one past the budget it evicts exactly one cell.
    EXPECT_EQ(SelectKept(CellsOfSize(budget + 1), config).size(),
              static_cast<size_t>(budget))
        << config.ToString();
  }
}

// An independent SirLLM: rank the middle by a full stable sort (score
// descending; stable, so equal scores keep the older first).
std::vector<int32_t> ReferenceSirLlm(const std::vector<Cell>& cells, int sinks,
                                     int entropy, int window) {
  const int n = static_cast<int>(cells.size());
  if (n <= sinks + entropy + window) return Range(0, n);
  std::vector<int32_t> middle = Range(sinks, n - window);
  std::stable_sort(middle.begin(), middle.end(), [&](int32_t a, int32_t b) {
    return cells[a].score > cells[b].score;
  });
  middle.resize(entropy);
  std::vector<int32_t> kept = Range(0, sinks);
  kept.insert(kept.end(), middle.begin(), middle.end());
  const std::vector<int32_t> recent = Range(n - window, n);
  kept.insert(kept.end(), recent.begin(), recent.end());
  std::sort(kept.begin(), kept.end());
  return kept;
}

TEST(SelectKeptTest, SirLlmMatchesAFullSortOnRandomScores) {
  std::mt19937 rng(42);
  // Few distinct values, so ties are everywhere.
  std::uniform_int_distribution<int> value(0, 4);
  for (int trial = 0; trial < 500; ++trial) {
    const int sinks = trial % 5;
    const int entropy = 1 + trial % 7;
    const int window = 1 + trial % 4;
    const int n = trial % 40;
    std::vector<float> scores(n);
    for (float& s : scores) s = static_cast<float>(value(rng));
    if (n > 0) scores[0] = kInf;
    const std::vector<Cell> cells = CellsWithScores(scores);
    const std::vector<int32_t> kept =
        SelectKept(cells, SirLlm(sinks, entropy, window));
    ASSERT_EQ(kept, ReferenceSirLlm(cells, sinks, entropy, window))
        << "trial " << trial;
    // Invariants stated by the policy, checked directly as well.
    ASSERT_TRUE(std::is_sorted(kept.begin(), kept.end()));
    ASSERT_LE(kept.size(), static_cast<size_t>(sinks + entropy + window));
    if (n > 0) {
      ASSERT_EQ(kept.front(), 0) << "BOS (+inf) dropped";
    }
    for (int i = 0; i < std::min(n, sinks); ++i) ASSERT_EQ(kept[i], i);
  }
}

struct PinnedCase {
  std::string name;
  PolicyConfig config;
  std::vector<float> scores;   // one cell per score
  std::vector<int32_t> pinned;  // indices of pinned cells
  std::vector<int32_t> want;
};

std::vector<Cell> CellsWithPins(const std::vector<float>& scores,
                                const std::vector<int32_t>& pinned) {
  std::vector<Cell> cells = CellsWithScores(scores);
  for (int32_t i : pinned) cells[i].pinned = true;
  return cells;
}

TEST(SelectKeptTest, PinnedTables) {
  const std::vector<PinnedCase> cases = {
      {"full keeps all, pins or not", Full(), {1, 2, 3}, {1}, {0, 1, 2}},
      {"window: pinned cell kept, window shrinks by one",
       Window(3), {0, 0, 0, 0, 0, 0, 0}, {1}, {1, 5, 6}},
      {"window: two pins, window of one",
       Window(3), {0, 0, 0, 0, 0, 0}, {0, 2}, {0, 2, 5}},
      {"window: a pin inside the window costs the same",
       Window(3), {0, 0, 0, 0, 0, 0}, {5}, {3, 4, 5}},
      {"streaming: pinned prefix after the sinks",
       Streaming(2, 4), {0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, {2, 3},
       {0, 1, 2, 3, 8, 9}},
      {"streaming: pins inside the sinks cost nothing",
       Streaming(2, 3), {0, 0, 0, 0, 0, 0, 0, 0}, {0, 1},
       {0, 1, 5, 6, 7}},
      {"streaming: a pinned turn in the middle",
       Streaming(1, 3), {0, 0, 0, 0, 0, 0, 0, 0, 0}, {4},
       {0, 4, 7, 8}},
      {"streaming: pins keep the budget",
       Streaming(1, 4), {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, {2, 3, 6},
       {0, 2, 3, 6, 11}},
      {"streaming: pins past the limit keep a window of one",
       Streaming(1, 2), {0, 0, 0, 0, 0, 0}, {1, 2, 3},
       {0, 1, 2, 3, 5}},
      // Middle (unprotected, before the window) = 1, 3, 4, 5 with scores
      // 5, 7, 1, 9: entropy 2 keeps 3 (7) and 5 (9); the high-scored pinned
      // cell 2 is not among them.
      {"sirllm: entropy set never counts pinned cells",
       SirLlm(1, 2, 3), {kInf, 5, 99, 7, 1, 9, 0, 0, 0}, {2},
       {0, 2, 3, 5, 7, 8}},
      {"sirllm: pinned low-score cell survives",
       SirLlm(1, 1, 2), {kInf, 9, -5, 3, 0, 0}, {2},
       {0, 1, 2, 5}},
      {"recompute ignores pins (it pins nothing)",
       Recompute(2), {kInf, 1, 2, 3}, {1}, {2, 3}},
  };
  for (const PinnedCase& c : cases) {
    const std::vector<Cell> cells = CellsWithPins(c.scores, c.pinned);
    EXPECT_THAT(SelectKept(cells, c.config), ElementsAreArray(c.want))
        << c.name;
    // The caller's pin count gives the same answer.
    std::vector<int32_t> a, b;
    SelectEvicted(cells, c.config, &a);
    SelectEvicted(cells, c.config, &b, static_cast<int>(c.pinned.size()));
    EXPECT_EQ(a, b) << c.name;
  }
}

// An independent model of pinning: protected = sinks + pinned; the window is
// the last (window - pinned outside sinks) unprotected cells; SirLLM ranks the
// other unprotected cells by a full stable sort.
std::vector<int32_t> ReferencePinned(const std::vector<Cell>& cells, int sinks,
                                     int entropy, int window) {
  const int n = static_cast<int>(cells.size());
  if (n <= sinks + entropy + window) return Range(0, n);
  std::vector<int32_t> kept, free;
  int pinned_outside = 0;
  for (int i = 0; i < n; ++i) {
    if (i < sinks || cells[i].pinned) {
      kept.push_back(i);
      if (i >= sinks) ++pinned_outside;
    } else {
      free.push_back(i);
    }
  }
  const int w = std::min<int>(std::max(1, window - pinned_outside), free.size());
  kept.insert(kept.end(), free.end() - w, free.end());
  free.resize(free.size() - w);
  std::stable_sort(free.begin(), free.end(), [&](int32_t a, int32_t b) {
    return cells[a].score > cells[b].score;
  });
  if (static_cast<int>(free.size()) > entropy) free.resize(entropy);
  kept.insert(kept.end(), free.begin(), free.end());
  std::sort(kept.begin(), kept.end());
  return kept;
}

TEST(SelectKeptTest, PinnedMatchesReferenceOnRandomCells) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> value(0, 4);
  int evicting = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    const int sinks = trial % 4;
    const int entropy = trial % 3 == 0 ? 0 : 1 + trial % 5;
    const int window = 2 + trial % 6;
    const int n = trial % 30;
    std::vector<float> scores(n);
    for (float& s : scores) s = static_cast<float>(value(rng));
    std::vector<Cell> cells = CellsWithScores(scores);
    // Pins within the limit: at most window - 1 cells.
    int budget_left = window - 1;
    for (int i = 0; i < n && budget_left > 0; ++i) {
      if (rng() % 5 == 0) {
        cells[i].pinned = true;
        --budget_left;
      }
    }
    const PolicyConfig config = entropy == 0 ? Streaming(sinks, window)
                                             : SirLlm(sinks, entropy, window);
    const std::vector<int32_t> kept = SelectKept(cells, config);
    ASSERT_EQ(kept, ReferencePinned(cells, sinks, entropy, window))
        << "trial " << trial;
    if (n > *config.Budget()) {
      ++evicting;
      // Within the limit the budget is exact.
      ASSERT_EQ(kept.size(), static_cast<size_t>(*config.Budget())) << trial;
    }
    for (int i = 0; i < n; ++i) {
      if (cells[i].pinned) {
        ASSERT_TRUE(std::binary_search(kept.begin(), kept.end(), i))
            << "pinned cell " << i << " evicted, trial " << trial;
      }
    }
    // The newest cell always survives.
    if (n > 0) {
      ASSERT_EQ(kept.back(), n - 1);
    }
  }
  EXPECT_GT(evicting, 500);
}

TEST(PolicyConfigTest, MaxPinnedParsesPrintsAndValidates) {
  absl::StatusOr<PolicyConfig> p = PolicyConfig::Parse("streaming(4,252,pinned=64)");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->max_pinned, 64);
  EXPECT_EQ(p->ToString(), "streaming(4,252,pinned=64)");
  EXPECT_EQ(*PolicyConfig::Parse(p->ToString()), *p);
  p = PolicyConfig::Parse("sirllm:sinks=4,entropy=8,window=20,pinned=3");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->ToString(), "sirllm(4,8,20,1,pinned=3)");
  EXPECT_EQ(*PolicyConfig::Parse(p->ToString()), *p);
  p = PolicyConfig::Parse("full(pinned=5)");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->ToString(), "full(pinned=5)");
  EXPECT_EQ(p->PinLimit(), 5);
  // Unset: pins may take the window down to one cell.
  EXPECT_EQ(Streaming(4, 252).PinLimit(), 251);
  EXPECT_EQ(Streaming(4, 252).ToString(), "streaming(4,252)");
  EXPECT_EQ(Recompute(8).PinLimit(), 0);
  // The window must keep a cell; recompute pins nothing; no negatives.
  for (const char* bad : {"streaming(4,8,pinned=8)", "window:window=4,pinned=9",
                          "recompute(8,pinned=1)", "streaming(4,8,pinned=-1)",
                          "streaming:sinks=4,window=8,pinned=1,pinned=2",
                          "streaming(4,8,pinned=x)"}) {
    absl::StatusOr<PolicyConfig> r = PolicyConfig::Parse(bad);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_THAT(std::string(PolicyConfig::Parse("streaming(4,8,pinned=8)").status().message()),
              HasSubstr("at least one cell"));
}

}  // namespace
}  // namespace sinkserve::memory
