#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace sinkserve::engine {
namespace {

constexpr char kStateMagic[4] = {'S', 'M', 'P', '1'};

uint64_t SplitMix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void PutU64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint32_t GetU32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(static_cast<uint8_t>(p[i])) << (8 * i);
  return v;
}

uint64_t GetU64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(p[i])) << (8 * i);
  return v;
}

}  // namespace

Xoshiro256::Xoshiro256(uint64_t seed) {
  uint64_t x = seed;
  for (uint64_t& s : state) s = SplitMix64(x);
}

uint64_t Xoshiro256::Next() {
  const uint64_t result = Rotl(state[1] * 5, 7) * 9;
  const uint64_t t = state[1] << 17;
  state[2] ^= state[0];
  state[3] ^= state[1];
  state[1] ^= state[2];
  state[0] ^= state[3];
  state[2] ^= t;
  state[3] = Rotl(state[3], 45);
  return result;
}

double Xoshiro256::Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

Sampler::Sampler(const SamplerOptions& options) : options_(options), rng_(options.seed) {}

void Sampler::Accept(int32_t token) {
  if (options_.penalty_last_n <= 0) return;
  window_.push_back(token);
  while (static_cast<int>(window_.size()) > options_.penalty_last_n) window_.pop_front();
}

void Sampler::Reset() { window_.clear(); }

void Sampler::Penalize(absl::Span<const float> logits) {
  const int64_t vocab = logits.size();
  candidates_.resize(vocab);
  for (int64_t i = 0; i < vocab; ++i) candidates_[i] = {static_cast<int32_t>(i), logits[i]};
  const bool active = options_.repeat_penalty != 1.f || options_.presence_penalty != 0.f ||
                      options_.frequency_penalty != 0.f;
  if (!active || window_.empty()) return;
  if (static_cast<int64_t>(counts_.size()) < vocab) counts_.resize(vocab, 0);
  for (int32_t t : window_) {
    if (t >= 0 && t < vocab) ++counts_[t];
  }
  // Each distinct token is penalised once; its count is then cleared so the
  // scratch is all zeros again for the next call.
  for (int32_t t : window_) {
    if (t < 0 || t >= vocab || counts_[t] == 0) continue;
    float& logit = candidates_[t].logit;
    if (options_.repeat_penalty != 1.f) {
      logit = logit > 0 ? logit / options_.repeat_penalty : logit * options_.repeat_penalty;
    }
    logit -= options_.frequency_penalty * counts_[t] + options_.presence_penalty;
    counts_[t] = 0;
  }
}

absl::Span<const TokenProb> Sampler::Distribution(absl::Span<const float> logits) {
  distribution_.clear();
  if (logits.empty()) return distribution_;
  Penalize(logits);
  auto more_likely = [](const Candidate& a, const Candidate& b) {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
  };

  if (options_.temperature <= 0.f) {
    const Candidate best = *std::min_element(candidates_.begin(), candidates_.end(),
                                             more_likely);
    distribution_.push_back({best.id, 1.f});
    return distribution_;
  }

  size_t n = candidates_.size();
  if (options_.top_k > 0 && static_cast<size_t>(options_.top_k) < n) {
    std::nth_element(candidates_.begin(), candidates_.begin() + options_.top_k,
                     candidates_.end(), more_likely);
    n = options_.top_k;
  }

  // Untempered probabilities of the top-k set: the filters below work on them.
  float max_logit = candidates_[0].logit;
  for (size_t i = 1; i < n; ++i) max_logit = std::max(max_logit, candidates_[i].logit);
  double total = 0.0;
  for (size_t i = 0; i < n; ++i) total += std::exp(double{candidates_[i].logit} - max_logit);

  // min-p keeps a prefix of the sorted order, so it can run before the sort
  // and shrink it; with pmax = exp(0) / total it keeps
  // exp(logit - max) >= min_p.
  if (options_.min_p > 0.f) {
    const float cutoff = max_logit + std::log(std::min(options_.min_p, 1.f));
    n = std::partition(candidates_.begin(), candidates_.begin() + n,
                       [&](const Candidate& c) { return c.logit >= cutoff; }) -
        candidates_.begin();
  }
  std::sort(candidates_.begin(), candidates_.begin() + n, more_likely);

  // top-p: the shortest prefix whose top-k probability mass reaches top_p.
  // Removing min-p's tail first does not change the prefix (the
  // normalisation still uses the top-k total).
  if (options_.top_p < 1.f) {
    double cum = 0.0;
    for (size_t i = 0; i < n; ++i) {
      cum += std::exp(double{candidates_[i].logit} - max_logit) / total;
      if (cum >= options_.top_p) {
        n = i + 1;
        break;
      }
    }
  }
  n = std::max<size_t>(n, 1);

  // Temperature reshapes the kept set.
  const double inv_t = 1.0 / options_.temperature;
  double sum = 0.0;
  distribution_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const double w = std::exp((double{candidates_[i].logit} - max_logit) * inv_t);
    distribution_[i] = {candidates_[i].id, static_cast<float>(w)};
    sum += w;
  }
  for (TokenProb& tp : distribution_) tp.p = static_cast<float>(tp.p / sum);
  return distribution_;
}

int32_t Sampler::Sample(absl::Span<const float> logits) {
  absl::Span<const TokenProb> dist = Distribution(logits);
  if (dist.empty()) return -1;
  if (dist.size() == 1) return dist[0].id;
  const double u = rng_.Uniform();
  double cum = 0.0;
  for (const TokenProb& tp : dist) {
    cum += tp.p;
    if (u < cum) return tp.id;
  }
  return dist.back().id;  // rounding left u above the last partial sum
}

std::string Sampler::SaveState() const {
  // magic, 4 x u64 random state, u32 window length, i32 tokens (oldest first).
  std::string out(kStateMagic, sizeof(kStateMagic));
  for (uint64_t s : rng_.state) PutU64(&out, s);
  const uint32_t n = window_.size();
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  for (int32_t t : window_) {
    const uint32_t u = static_cast<uint32_t>(t);
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((u >> (8 * i)) & 0xff));
  }
  return out;
}

absl::Status Sampler::RestoreState(std::string_view bytes) {
  constexpr size_t kHeader = sizeof(kStateMagic) + 4 * 8 + 4;
  if (bytes.size() < kHeader || std::memcmp(bytes.data(), kStateMagic, 4) != 0) {
    return absl::InvalidArgumentError("not a sampler state (bad magic or too short)");
  }
  const char* p = bytes.data() + sizeof(kStateMagic);
  uint64_t state[4];
  for (uint64_t& s : state) {
    s = GetU64(p);
    p += 8;
  }
  const uint32_t n = GetU32(p);
  p += 4;
  if (bytes.size() != kHeader + 4 * static_cast<size_t>(n)) {
    return absl::InvalidArgumentError(absl::StrCat("sampler state of ", bytes.size(),
                                                   " bytes does not hold ", n, " tokens"));
  }
  if ((state[0] | state[1] | state[2] | state[3]) == 0) {
    return absl::InvalidArgumentError("sampler state has an all-zero random state");
  }
  std::copy(state, state + 4, rng_.state);
  window_.clear();
  for (uint32_t i = 0; i < n; ++i, p += 4) {
    const uint32_t u = GetU32(p);
    Accept(static_cast<int32_t>(u));
  }
  return absl::OkStatus();
}

}  // namespace sinkserve::engine
