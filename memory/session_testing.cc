#include "memory/session_testing.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <numeric>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "memory/kv_cache.h"

namespace sinkserve::memory::store_testing {
namespace {

uint64_t SplitMix(uint64_t* x) {
  uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t HashString(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (char c : s) h = (h ^ static_cast<uint8_t>(c)) * 1099511628211ull;
  return h;
}

void FillRandom(uint64_t seed, char* out, size_t n) {
  uint64_t x = seed;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint64_t v = SplitMix(&x);
    std::memcpy(out + i, &v, 8);
  }
  if (i < n) {
    const uint64_t v = SplitMix(&x);
    std::memcpy(out + i, &v, n - i);
  }
}

std::string RandomBytes(std::mt19937_64& rng, size_t n) {
  std::string s(n, '\0');
  FillRandom(rng(), s.data(), n);
  return s;
}

KvShape ShapeOf(const SimOptions& o) {
  return KvShape{o.dtype_bytes == 2 ? "f16" : "f32", o.dtype_bytes, o.n_layers,
                 o.kv_dim};
}

// Appends `n` tokens with scores drawn from `rng`, trims, and copies the
// cache's bookkeeping into `state`.
void AppendTokens(KvCache* cache, int n, std::mt19937_64& rng,
                  SessionState* state) {
  std::vector<int32_t> tokens(n);
  std::vector<float> scores(n);
  for (int i = 0; i < n; ++i) {
    tokens[i] = static_cast<int32_t>(rng() % 32000);
    scores[i] = static_cast<float>(rng() % 1000) / 100.0f;
  }
  if (!cache->Append(tokens, scores).ok()) std::abort();
  cache->Trim();
  state->cache = cache->State();
}

}  // namespace

SessionState RandomState(std::mt19937_64& rng, const std::string& id,
                         const RandomStateOptions& o) {
  SessionState s;
  s.id = id;
  s.model_fingerprint = absl::StrCat("model-", rng() % 1000);
  s.policy =
      PolicyConfig{PolicyKind::kSirLlm, 4, o.cells / 2, o.cells / 4, 0.875f};
  s.capacity = o.capacity;
  s.kv_shape = KvShape{o.dtype, o.dtype_bytes, o.n_layers, o.kv_dim};
  std::vector<int32_t> slots(o.capacity);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  int64_t arrival = 0;
  for (int i = 0; i < o.cells; ++i) {
    Cell c;
    c.token = static_cast<int32_t>(rng() % 50000);
    c.score = i == 0   ? std::numeric_limits<float>::infinity()
              : i == 1 ? -0.0f
                       : static_cast<float>(rng() % 100000) / 997.0f;
    c.arrival = arrival;
    arrival += 1 + static_cast<int64_t>(rng() % 3);
    c.slot = slots[i];
    s.cache.cells.push_back(c);
  }
  s.cache.tokens_seen = arrival + static_cast<int64_t>(rng() % 5);
  s.cache.evicted_total = s.cache.tokens_seen - o.cells;
  s.kv =
      RandomBytes(rng, static_cast<size_t>(o.cells * s.kv_shape.cell_bytes()));
  s.rounds = static_cast<int64_t>(rng() % 100);
  s.turns = 2 * s.rounds + 1;
  s.history_length = static_cast<int64_t>(rng() % 10000);
  s.sampler_config = RandomBytes(rng, 1 + rng() % 64);
  s.rng_state = RandomBytes(rng, rng() % 2500);
  s.created_at = absl::FromUnixNanos(1700000000123456789 +
                                     static_cast<int64_t>(rng() % 1000000));
  s.updated_at = s.created_at + absl::Nanoseconds(rng() % 1000000000000);
  for (int i = static_cast<int>(rng() % 3); i > 0; --i) {
    s.pending.push_back({static_cast<int32_t>(rng() % 50000),
                         static_cast<float>(rng() % 1000) / 7.0f});
  }
  // Pins over single cells (arrivals have gaps, and a pin must cover only
  // cells), the system prompt's on cell 0, and sometimes a pin limit.
  if (rng() % 2 == 0) {
    s.cache.pins.push_back(Pin{"", 0, 1});
    for (int i = 1; i < o.cells; ++i) {
      if (rng() % 4 != 0) continue;
      const int64_t a = s.cache.cells[i].arrival;
      s.cache.pins.push_back(Pin{absl::StrCat("turn-", a), a, a + 1});
    }
    MarkPinned(&s.cache);
    if (rng() % 2 == 0) s.policy.max_pinned = std::max(1, s.policy.window - 1);
  }
  if (rng() % 2 == 0) {
    s.last_turn.turn_id = absl::StrCat("t", rng() % 1000);
    s.last_turn.text = RandomBytes(rng, rng() % 40);
    for (int i = static_cast<int>(rng() % 5); i > 0; --i) {
      s.last_turn.token_ids.push_back(static_cast<int32_t>(rng() % 50000));
      s.last_turn.logprobs.push_back(-static_cast<float>(rng() % 1000) / 7.0f);
    }
    s.last_turn.stop_reason = static_cast<int32_t>(rng() % 6);
    s.last_turn.generated_tokens =
        static_cast<int64_t>(s.last_turn.token_ids.size());
  }
  return s;
}

SessionState SimInitialMetadata(const std::string& id, const SimOptions& o) {
  SessionState s;
  s.id = id;
  s.model_fingerprint = o.fingerprint;
  s.policy = o.policy;
  s.capacity = static_cast<int32_t>(std::max<int64_t>(
      KvCache::MinCapacity(o.policy, std::max({o.max_step_tokens, o.step_tokens,
                                               o.prompt_tokens})),
      o.prompt_tokens));
  s.kv_shape = ShapeOf(o);
  s.sampler_config = "temperature=0.7;top_p=0.9";
  s.created_at = absl::FromUnixSeconds(1700000000);
  s.updated_at = s.created_at;
  absl::StatusOr<KvCache> cache = KvCache::Create(o.policy, s.capacity);
  if (!cache.ok()) std::abort();
  std::mt19937_64 rng(HashString(id));
  AppendTokens(&*cache, o.prompt_tokens, rng, &s);
  s.rng_state = absl::StrCat("rng@0");
  return s;
}

SessionState SimStepMetadata(const SessionState& prev, const SimOptions& o,
                             int64_t step) {
  SessionState s = prev.Copy();
  s.kv.clear();
  absl::StatusOr<KvCache> cache =
      KvCache::Restore(prev.policy, prev.capacity, prev.cache);
  if (!cache.ok()) std::abort();
  std::mt19937_64 rng(HashString(prev.id) ^ (0x51ED270B27ull * (step + 1)));
  const int n = o.step_tokens > 0
                    ? o.step_tokens
                    : 1 + static_cast<int>(rng() % o.max_step_tokens);
  // Every fifth step's tokens are pinned (when the policy has room), and
  // every seventh unpins the oldest pinned step: deltas carry pin changes.
  if (step % 5 == 0) {
    (void)cache->PinTokens(absl::StrCat("step-", step), cache->tokens_seen(),
                           n, o.policy.PinLimit() / 2);
  }
  if (step % 7 == 0 && !cache->pins().empty()) {
    (void)cache->Unpin(std::string(cache->pins().front().label));
  }
  AppendTokens(&*cache, n, rng, &s);
  if (step % 2 == 0) {
    cache->EndRound();  // every other step ends a round: scores decay
    s.cache = cache->State();
    ++s.rounds;
  }
  s.turns = step;
  s.history_length += n;
  s.updated_at = s.created_at + absl::Seconds(step);
  s.rng_state = absl::StrCat("rng@", step);
  // The turn's last sampled token, not cached yet; none every third step.
  s.pending.clear();
  if (step % 3 != 0) {
    s.pending.push_back({static_cast<int32_t>(step % 500),
                         static_cast<float>(step) * 0.25f});
  }
  if (step % 10 == 0)
    s.sampler_config = absl::StrCat("temperature=0.", step % 9);
  return s;
}

std::string SimRows(const SessionState& state, absl::Span<const Cell> cells) {
  const KvShape& shape = state.kv_shape;
  const int64_t row = shape.row_bytes();
  const int64_t m = static_cast<int64_t>(cells.size());
  const int64_t blocks = int64_t{shape.n_layers} * 2;
  std::string out(static_cast<size_t>(blocks * m * row), '\0');
  const uint64_t seed = HashString(state.id);
  for (int64_t block = 0; block < blocks; ++block) {
    for (int64_t i = 0; i < m; ++i) {
      FillRandom(seed ^ (static_cast<uint64_t>(cells[i].arrival) << 16) ^
                     static_cast<uint64_t>(block),
                 out.data() + (block * m + i) * row, static_cast<size_t>(row));
    }
  }
  return out;
}

SessionState SimStateAt(const std::string& id, const SimOptions& options,
                        int64_t step) {
  SessionState s = SimInitialMetadata(id, options);
  for (int64_t k = 1; k <= step; ++k) s = SimStepMetadata(s, options, k);
  s.kv = SimRows(s, s.cache.cells);
  return s;
}

std::string Difference(const SessionState& a, const SessionState& b) {
  if (a == b) return "";
  auto field = [](const char* name, const auto& x, const auto& y) {
    return x == y ? std::string()
                  : absl::StrCat(name, " differs: ", x, " vs ", y);
  };
  std::string d;
  for (const std::string& s :
       {field("id", a.id, b.id),
        field("fingerprint", a.model_fingerprint, b.model_fingerprint),
        field("policy", a.policy.ToString(), b.policy.ToString()),
        field("capacity", a.capacity, b.capacity),
        field("cells", a.cache.cells.size(), b.cache.cells.size()),
        field("tokens_seen", a.cache.tokens_seen, b.cache.tokens_seen),
        field("evicted_total", a.cache.evicted_total, b.cache.evicted_total),
        field("rounds", a.rounds, b.rounds), field("turns", a.turns, b.turns),
        field("history_length", a.history_length, b.history_length),
        field("sampler_config", a.sampler_config, b.sampler_config),
        field("rng_state", a.rng_state, b.rng_state),
        field("pending tokens", a.pending.size(), b.pending.size()),
        field("last turn", a.last_turn.turn_id, b.last_turn.turn_id),
        field("pins", a.cache.pins.size(), b.cache.pins.size()),
        field("created_at", absl::FormatTime(a.created_at),
              absl::FormatTime(b.created_at)),
        field("updated_at", absl::FormatTime(a.updated_at),
              absl::FormatTime(b.updated_at)),
        field("kv bytes", a.kv.size(), b.kv.size())}) {
    if (!s.empty()) return s;
  }
  for (size_t i = 0; i < a.cache.cells.size(); ++i) {
    const Cell& x = a.cache.cells[i];
    const Cell& y = b.cache.cells[i];
    uint32_t xs, ys;
    std::memcpy(&xs, &x.score, 4);
    std::memcpy(&ys, &y.score, 4);
    if (x.token != y.token || xs != ys || x.arrival != y.arrival ||
        x.slot != y.slot) {
      return absl::StrCat("cell ", i, " differs: (", x.token, ", ", x.score,
                          ", ", x.arrival, ", ", x.slot, ") vs (", y.token,
                          ", ", y.score, ", ", y.arrival, ", ", y.slot, ")");
    }
  }
  const auto mismatch = std::mismatch(a.kv.begin(), a.kv.end(), b.kv.begin());
  if (mismatch.first != a.kv.end()) {
    return absl::StrCat("kv differs first at byte ",
                        mismatch.first - a.kv.begin());
  }
  return "differs in policy bits or kv shape";
}

}  // namespace sinkserve::memory::store_testing
