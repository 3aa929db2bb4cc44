// Cache policies: which cached tokens a bounded KV cache keeps.
//
// A policy is a pure function from the cells' metadata, in logical order, to
// the indices of the cells to keep. It sees token ids, scores and arrival
// indices, never tensors, so every policy is tested with plain tables and the
// backend only ever learns "slot s is free again".
//
//   full            never evicts; KvCache reports RESOURCE_EXHAUSTED when full
//   window(W)       the last W cells
//   streaming(S,W)  the first S cells (attention sinks) + the last W
//                   (StreamingLLM, Xiao et al. 2023)
//   sirllm(S,E,W,d) the first S + the E highest-scored of the rest + the last W
//                   (SirLLM, Yao et al. 2024); scores decay by d per round
//   recompute(W)    baseline: every new token re-encodes the last W tokens
//                   from scratch at positions 0..W-1
//
// Pinned cells (a session's system prompt, facts a client asked to keep) are
// kept by every policy, like sinks, and their count comes out of the window:
// with P pinned cells outside the sinks, streaming keeps S + P + (W - P)
// cells, SirLLM S + P + E + (W - P), so the budget never changes. SirLLM
// picks its E cells among the unpinned ones only.
#ifndef SINKSERVE_MEMORY_CACHE_POLICY_H_
#define SINKSERVE_MEMORY_CACHE_POLICY_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace sinkserve::memory {

// Metadata of one cached token.
struct Cell {
  int32_t token = 0;
  // Surprisal -ln p(token | context) from the logits that predicted the token;
  // +inf for the first cell of a session (BOS), which SirLLM must never drop.
  float score = 0.0f;
  // Index of the token among everything the session ever appended (0, 1, ...).
  // Logical order is arrival order, so arrivals strictly increase along it.
  int64_t arrival = 0;
  // Row in the backend's KvStorage holding this token's K/V. Policies ignore
  // it.
  int32_t slot = 0;
  // Kept whatever the policy says (KvCache sets it from its pins).
  bool pinned = false;

  friend bool operator==(const Cell& a, const Cell& b) {
    return a.token == b.token && a.score == b.score && a.arrival == b.arrival &&
           a.slot == b.slot && a.pinned == b.pinned;
  }
};

enum class PolicyKind { kFull, kWindow, kStreaming, kSirLlm, kRecompute };

// "full", "window", "streaming", "sirllm", "recompute".
std::string_view PolicyKindName(PolicyKind kind);
// The inverse of PolicyKindName, case-insensitive.
absl::StatusOr<PolicyKind> ParsePolicyKind(std::string_view name);

// Largest budget a policy may ask for; keeps every sum of sizes inside int.
inline constexpr int kMaxPolicyCells = 1 << 26;

struct PolicyConfig {
  // Default: kFull.
  PolicyKind kind = PolicyKind::kFull;
  // Attention sinks kept at the front (streaming, sirllm). Default: 4, the
  // StreamingLLM paper's choice.
  int sinks = 4;
  // Most recent cells kept (window, streaming, sirllm, recompute); must be >= 1
  // so the newest token survives Trim until its score is known. Default: 0,
  // i.e. unset, which Validate rejects for the kinds that use it.
  int window = 0;
  // High-surprisal cells kept between sinks and window (sirllm). Default: 0.
  int entropy = 0;
  // Factor applied to every stored score at each round boundary (sirllm), in
  // (0, 1]. Default: 1, no decay.
  float decay = 1.0f;
  // Most cells a session may pin (every kind but recompute, which pins
  // nothing). 0 = no limit of the policy's own: pins may then take the
  // window down to one cell (servers keep a larger minimum window). Must
  // leave the window at least one cell. Default: 0.
  int max_pinned = 0;

  // INVALID_ARGUMENT naming the offending field. Fields a kind does not use are
  // not checked (flags carry defaults for all of them).
  absl::Status Validate() const;

  // Cells kept after a Trim: window = W, streaming = S+W, sirllm = S+E+W,
  // recompute = W; nullopt for full, which is bounded by slot capacity only.
  std::optional<int> Budget() const;

  // Most cells that may be pinned at once: max_pinned, or when it is 0 what
  // leaves the window one cell (window - 1; unbounded under full, 0 under
  // recompute).
  int PinLimit() const;

  // Compact form listing only the fields the kind uses: "full", "window(512)",
  // "streaming(4,252)", "sirllm(4,64,188,0.9)", "recompute(256)", followed by
  // ",pinned=N" inside the parentheses when max_pinned is set
  // ("streaming(4,252,pinned=64)"). Parse reads it back exactly.
  std::string ToString() const;

  // Parses either ToString's form or "kind[:key=value[,key=value...]]" with
  // keys sinks, window, entropy, decay, pinned (e.g.
  // "streaming:sinks=4,window=252"); absent keys keep their defaults. A key
  // the kind does not use is an error. The result is validated.
  static absl::StatusOr<PolicyConfig> Parse(std::string_view spec);

  // From command-line flag values. Every flag always has a value, so fields
  // the kind does not use are ignored and left at their defaults (equal
  // policies compare equal however they were given). The result is validated.
  static absl::StatusOr<PolicyConfig> FromFlags(std::string_view kind,
                                                int64_t sinks, int64_t window,
                                                int64_t entropy, double decay);

  friend bool operator==(const PolicyConfig& a, const PolicyConfig& b) {
    return a.kind == b.kind && a.sinks == b.sinks && a.window == b.window &&
           a.entropy == b.entropy && a.decay == b.decay &&
           a.max_pinned == b.max_pinned;
  }
  friend bool operator!=(const PolicyConfig& a, const PolicyConfig& b) {
    return !(a == b);
  }
};

// The policy itself: indices into `cells` (logical order) of the cells to
// keep, ascending. While cells.size() <= Budget() every policy keeps all.
// `config` must be valid. Ties in score keep the older (lower-index) cell.
// Pinned cells are always kept; the window shrinks by the pinned cells that
// are not sinks, but never below one cell (pins beyond PinLimit() would then
// keep more than the budget; KvCache never pins that many).
std::vector<int32_t> SelectKept(absl::Span<const Cell> cells,
                                const PolicyConfig& config);

// The complement of SelectKept, ascending, into `evicted` (its storage is
// reused, so a per-token Trim allocates nothing). `pinned` is the number of
// pinned cells when the caller knows it (KvCache counts them), -1 to count
// them here. Without pins: O(evicted) for window/streaming/recompute, for
// SirLLM O(entropy) with nth_element plus O(k log k) to order the k evicted
// cells; with pins one more pass over the cells.
void SelectEvicted(absl::Span<const Cell> cells, const PolicyConfig& config,
                   std::vector<int32_t>* evicted, int pinned = -1);

}  // namespace sinkserve::memory

#endif  // SINKSERVE_MEMORY_CACHE_POLICY_H_
