#include "memory/cache_policy.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "memory/status_macros.h"

namespace sinkserve::memory {
namespace {

// Debian's Abseil has its own string_view type; the API uses std's.
absl::string_view Sv(std::string_view s) { return {s.data(), s.size()}; }
std::string_view Std(absl::string_view s) { return {s.data(), s.size()}; }
absl::string_view KindName(PolicyKind kind) { return Sv(PolicyKindName(kind)); }

// Which PolicyConfig fields a kind reads, in the order ToString prints them.
enum Field { kSinks, kEntropy, kWindow, kDecay };

std::vector<Field> FieldsOf(PolicyKind kind) {
  switch (kind) {
    case PolicyKind::kFull:
      return {};
    case PolicyKind::kWindow:
    case PolicyKind::kRecompute:
      return {kWindow};
    case PolicyKind::kStreaming:
      return {kSinks, kWindow};
    case PolicyKind::kSirLlm:
      return {kSinks, kEntropy, kWindow, kDecay};
  }
  return {};
}

bool Uses(PolicyKind kind, Field field) {
  const std::vector<Field> fields = FieldsOf(kind);
  return std::find(fields.begin(), fields.end(), field) != fields.end();
}

absl::string_view FieldName(Field field) {
  switch (field) {
    case kSinks:
      return "sinks";
    case kEntropy:
      return "entropy";
    case kWindow:
      return "window";
    case kDecay:
      return "decay";
  }
  return "?";
}

std::optional<Field> FieldFromName(absl::string_view name) {
  for (Field f : {kSinks, kEntropy, kWindow, kDecay}) {
    if (name == FieldName(f)) return f;
  }
  return std::nullopt;
}

// max_pinned is spelled "pinned" in both forms; recompute pins nothing.
constexpr absl::string_view kPinnedKey = "pinned";
bool UsesPinned(PolicyKind kind) { return kind != PolicyKind::kRecompute; }

absl::Status SetPinned(PolicyConfig& config, absl::string_view spec,
                       absl::string_view text) {
  if (!UsesPinned(config.kind)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cache policy '", spec, "': ", KindName(config.kind),
                     " takes no pinned"));
  }
  int64_t value;
  text = absl::StripAsciiWhitespace(text);
  if (!absl::SimpleAtoi(text, &value) || value < 0 ||
      value > kMaxPolicyCells) {
    return absl::InvalidArgumentError(
        absl::StrCat("cache policy '", spec, "': pinned '", text,
                     "' is not an integer in [0, ", kMaxPolicyCells, "]"));
  }
  config.max_pinned = static_cast<int>(value);
  return absl::OkStatus();
}

// Shortest text that reads back as the same float.
std::string FloatToString(float value) {
  char buf[32];
  const std::to_chars_result r = std::to_chars(buf, buf + sizeof(buf), value);
  return std::string(buf, r.ptr);
}

absl::Status SetField(PolicyConfig& config, Field field,
                      absl::string_view text) {
  text = absl::StripAsciiWhitespace(text);
  if (field == kDecay) {
    float value;
    if (!absl::SimpleAtof(text, &value)) {
      return absl::InvalidArgumentError(
          absl::StrCat("decay: '", text, "' is not a number"));
    }
    config.decay = value;
    return absl::OkStatus();
  }
  int64_t value;
  if (!absl::SimpleAtoi(text, &value) ||
      value < std::numeric_limits<int>::min() ||
      value > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(
        FieldName(field), ": '", text, "' is not an integer in int range"));
  }
  const int v = static_cast<int>(value);
  switch (field) {
    case kSinks:
      config.sinks = v;
      break;
    case kEntropy:
      config.entropy = v;
      break;
    case kWindow:
      config.window = v;
      break;
    case kDecay:
      break;
  }
  return absl::OkStatus();
}

// "streaming(4,252)": one argument per field the kind uses, in FieldsOf order.
absl::StatusOr<PolicyConfig> ParseCompact(absl::string_view spec) {
  const size_t open = spec.find('(');
  if (spec.back() != ')') {
    return absl::InvalidArgumentError(
        absl::StrCat("cache policy '", spec, "': missing ')'"));
  }
  PolicyConfig config;
  SINKSERVE_ASSIGN_OR_RETURN(config.kind,
                             ParsePolicyKind(Std(spec.substr(0, open))));
  const absl::string_view inner =
      absl::StripAsciiWhitespace(spec.substr(open + 1, spec.size() - open - 2));
  std::vector<absl::string_view> args;
  if (!inner.empty()) args = absl::StrSplit(inner, ',');
  // A trailing "pinned=N" is the only keyword the compact form has.
  if (!args.empty() && absl::StartsWith(absl::StripAsciiWhitespace(args.back()),
                                        absl::StrCat(kPinnedKey, "="))) {
    const absl::string_view item = absl::StripAsciiWhitespace(args.back());
    SINKSERVE_RETURN_IF_ERROR(
        SetPinned(config, spec, item.substr(kPinnedKey.size() + 1)));
    args.pop_back();
  }
  const std::vector<Field> fields = FieldsOf(config.kind);
  // The last field may be left out when it is the decay (papers write
  // sirllm(4,126,126) for no decay).
  const bool decay_omitted = !fields.empty() && fields.back() == kDecay &&
                             args.size() + 1 == fields.size();
  if (args.size() != fields.size() && !decay_omitted) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cache policy '", spec, "': ", KindName(config.kind), " takes ",
        fields.size(), " argument(s), got ", args.size()));
  }
  for (size_t i = 0; i < args.size(); ++i) {
    SINKSERVE_RETURN_IF_ERROR(SetField(config, fields[i], args[i]));
  }
  return config;
}

// "streaming:sinks=4,window=252".
absl::StatusOr<PolicyConfig> ParseKeyValues(absl::string_view spec) {
  const size_t colon = spec.find(':');
  PolicyConfig config;
  SINKSERVE_ASSIGN_OR_RETURN(config.kind,
                             ParsePolicyKind(Std(spec.substr(0, colon))));
  if (colon == absl::string_view::npos) return config;
  std::vector<Field> seen;
  bool pinned_seen = false;
  for (absl::string_view item : absl::StrSplit(spec.substr(colon + 1), ',')) {
    const size_t eq = item.find('=');
    if (eq == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cache policy '", spec, "': expected key=value, got '", item, "'"));
    }
    const absl::string_view key =
        absl::StripAsciiWhitespace(item.substr(0, eq));
    if (key == kPinnedKey) {
      if (pinned_seen) {
        return absl::InvalidArgumentError(
            absl::StrCat("cache policy '", spec, "': pinned given twice"));
      }
      pinned_seen = true;
      SINKSERVE_RETURN_IF_ERROR(SetPinned(config, spec, item.substr(eq + 1)));
      continue;
    }
    const std::optional<Field> field = FieldFromName(key);
    if (!field) {
      return absl::InvalidArgumentError(
          absl::StrCat("cache policy '", spec, "': unknown key '", key,
                       "' (keys: sinks, window, entropy, decay, pinned)"));
    }
    if (!Uses(config.kind, *field)) {
      return absl::InvalidArgumentError(
          absl::StrCat("cache policy '", spec, "': ", KindName(config.kind),
                       " takes no ", key));
    }
    if (std::find(seen.begin(), seen.end(), *field) != seen.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("cache policy '", spec, "': ", key, " given twice"));
    }
    seen.push_back(*field);
    SINKSERVE_RETURN_IF_ERROR(SetField(config, *field, item.substr(eq + 1)));
  }
  return config;
}

absl::Status CheckCount(const PolicyConfig& c, absl::string_view name,
                        int value, int min) {
  if (value < min || value > kMaxPolicyCells) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cache policy ", KindName(c.kind), ": ", name, " must be in [", min,
        ", ", kMaxPolicyCells, "], got ", value));
  }
  return absl::OkStatus();
}

// NaN would break nth_element's strict weak order; it ranks as -inf.
float RankKey(float score) {
  return std::isnan(score) ? -std::numeric_limits<float>::infinity() : score;
}

}  // namespace

std::string_view PolicyKindName(PolicyKind kind) {
  switch (kind) {
    case PolicyKind::kFull:
      return "full";
    case PolicyKind::kWindow:
      return "window";
    case PolicyKind::kStreaming:
      return "streaming";
    case PolicyKind::kSirLlm:
      return "sirllm";
    case PolicyKind::kRecompute:
      return "recompute";
  }
  return "unknown";
}

absl::StatusOr<PolicyKind> ParsePolicyKind(std::string_view name) {
  const std::string lower =
      absl::AsciiStrToLower(absl::StripAsciiWhitespace(Sv(name)));
  for (PolicyKind kind :
       {PolicyKind::kFull, PolicyKind::kWindow, PolicyKind::kStreaming,
        PolicyKind::kSirLlm, PolicyKind::kRecompute}) {
    if (lower == PolicyKindName(kind)) return kind;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown cache policy '", Sv(name),
                   "' (expected full, window, streaming, sirllm, recompute)"));
}

absl::Status PolicyConfig::Validate() const {
  if (Uses(kind, kSinks)) {
    SINKSERVE_RETURN_IF_ERROR(CheckCount(*this, "sinks", sinks, 0));
  }
  if (Uses(kind, kEntropy)) {
    // entropy = 0 is streaming(S, W); asking for sirllm without entropy cells
    // is more likely a forgotten flag than a wish.
    SINKSERVE_RETURN_IF_ERROR(CheckCount(*this, "entropy", entropy, 1));
  }
  if (Uses(kind, kWindow)) {
    // The newest cell must survive Trim: its score, and for SirLLM its rank,
    // is not known yet.
    SINKSERVE_RETURN_IF_ERROR(CheckCount(*this, "window", window, 1));
  }
  if (Uses(kind, kDecay) && !(decay > 0.0f && decay <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cache policy ", KindName(kind),
                     ": decay must be in (0, 1], got ", FloatToString(decay)));
  }
  const std::optional<int> budget = Budget();
  if (budget && (*budget < 1 || *budget > kMaxPolicyCells)) {
    return absl::InvalidArgumentError(absl::StrCat("cache policy ", ToString(),
                                                   ": budget must be in [1, ",
                                                   kMaxPolicyCells, "]"));
  }
  if (max_pinned < 0 || max_pinned > kMaxPolicyCells) {
    return absl::InvalidArgumentError(
        absl::StrCat("cache policy ", KindName(kind), ": pinned must be in [0, ",
                     kMaxPolicyCells, "], got ", max_pinned));
  }
  if (max_pinned > 0 && !UsesPinned(kind)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cache policy ", KindName(kind), " pins nothing"));
  }
  if (max_pinned > 0 && Uses(kind, kWindow) && max_pinned >= window) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cache policy ", KindName(kind), ": pinned ", max_pinned,
        " must leave the window of ", window, " at least one cell"));
  }
  return absl::OkStatus();
}

int PolicyConfig::PinLimit() const {
  if (!UsesPinned(kind)) return 0;
  if (max_pinned > 0) return max_pinned;
  if (kind == PolicyKind::kFull) return kMaxPolicyCells;
  return std::max(0, window - 1);
}

std::optional<int> PolicyConfig::Budget() const {
  // int64 so that an invalid config cannot overflow here; Validate bounds it.
  int64_t budget = 0;
  switch (kind) {
    case PolicyKind::kFull:
      return std::nullopt;
    case PolicyKind::kWindow:
    case PolicyKind::kRecompute:
      budget = window;
      break;
    case PolicyKind::kStreaming:
      budget = int64_t{sinks} + window;
      break;
    case PolicyKind::kSirLlm:
      budget = int64_t{sinks} + entropy + window;
      break;
  }
  return static_cast<int>(std::clamp<int64_t>(budget,
                                              std::numeric_limits<int>::min(),
                                              std::numeric_limits<int>::max()));
}

std::string PolicyConfig::ToString() const {
  const std::vector<Field> fields = FieldsOf(kind);
  std::string out(PolicyKindName(kind));
  if (fields.empty()) {
    // "full(pinned=N)": the compact form with the keyword alone.
    if (max_pinned > 0) absl::StrAppend(&out, "(", kPinnedKey, "=", max_pinned, ")");
    return out;
  }
  out += '(';
  for (size_t i = 0; i < fields.size(); ++i) {
    if (i > 0) out += ',';
    switch (fields[i]) {
      case kSinks:
        absl::StrAppend(&out, sinks);
        break;
      case kEntropy:
        absl::StrAppend(&out, entropy);
        break;
      case kWindow:
        absl::StrAppend(&out, window);
        break;
      case kDecay:
        out += FloatToString(decay);
        break;
    }
  }
  if (max_pinned > 0) absl::StrAppend(&out, ",", kPinnedKey, "=", max_pinned);
  out += ')';
  return out;
}

absl::StatusOr<PolicyConfig> PolicyConfig::Parse(std::string_view text) {
  const absl::string_view spec = absl::StripAsciiWhitespace(Sv(text));
  if (spec.empty()) return absl::InvalidArgumentError("empty cache policy");
  PolicyConfig config;
  if (spec.find('(') != absl::string_view::npos) {
    SINKSERVE_ASSIGN_OR_RETURN(config, ParseCompact(spec));
  } else {
    SINKSERVE_ASSIGN_OR_RETURN(config, ParseKeyValues(spec));
  }
  SINKSERVE_RETURN_IF_ERROR(config.Validate());
  return config;
}

absl::StatusOr<PolicyConfig> PolicyConfig::FromFlags(std::string_view kind,
                                                     int64_t sinks,
                                                     int64_t window,
                                                     int64_t entropy,
                                                     double decay) {
  PolicyConfig config;
  SINKSERVE_ASSIGN_OR_RETURN(config.kind, ParsePolicyKind(kind));
  // Unused fields stay at their defaults, so equal policies compare equal
  // however they were spelled.
  const std::pair<Field, int64_t> counts[] = {
      {kSinks, sinks}, {kWindow, window}, {kEntropy, entropy}};
  for (const auto& [field, value] : counts) {
    if (!Uses(config.kind, field)) continue;
    SINKSERVE_RETURN_IF_ERROR(SetField(config, field, absl::StrCat(value)));
  }
  if (Uses(config.kind, kDecay)) config.decay = static_cast<float>(decay);
  SINKSERVE_RETURN_IF_ERROR(config.Validate());
  return config;
}

namespace {

// Lower score first; equal scores: the newer (higher index) first, so the
// older is kept.
struct WorseCell {
  absl::Span<const Cell> cells;
  bool operator()(int32_t a, int32_t b) const {
    const float sa = RankKey(cells[a].score);
    const float sb = RankKey(cells[b].score);
    return sa < sb || (sa == sb && a > b);
  }
};

// Leading cells every policy keeps as attention sinks.
int SinksOf(const PolicyConfig& config) {
  return config.kind == PolicyKind::kStreaming ||
                 config.kind == PolicyKind::kSirLlm
             ? config.sinks
             : 0;
}

// Eviction with `pinned` pinned cells among `cells`: sinks and pinned cells
// are protected, the window is the last (window - pinned outside the sinks)
// unprotected cells, and SirLLM keeps its `entropy` best among the
// unprotected cells in front of the window. Streaming and window evict the
// oldest unprotected cells: a walk from the sinks, O(sinks + pinned cells
// passed + evicted). SirLLM: one pass over the cells plus the selection.
void SelectEvictedPinned(absl::Span<const Cell> cells,
                         const PolicyConfig& config, int budget, int pinned,
                         std::vector<int32_t>* evicted) {
  const int n = static_cast<int>(cells.size());
  const int sinks = std::min(SinksOf(config), n);
  int pinned_outside = pinned;
  for (int i = 0; i < sinks; ++i) pinned_outside -= cells[i].pinned ? 1 : 0;
  const int entropy =
      config.kind == PolicyKind::kSirLlm ? config.entropy : 0;
  // Never below one cell: the newest must survive (see PinLimit).
  const int window = std::max(1, budget - SinksOf(config) - entropy -
                                     pinned_outside);
  const int unprotected = n - sinks - pinned_outside;
  if (entropy == 0) {
    int excess = unprotected - window;
    for (int i = sinks; i < n && excess > 0; ++i) {
      if (cells[i].pinned) continue;
      evicted->push_back(i);
      --excess;
    }
    return;
  }
  // SirLLM: the unprotected cells in front of the window are candidates
  // (ascending); all but `entropy` of them go.
  int candidates = unprotected - window;
  for (int i = sinks; i < n && candidates > 0; ++i) {
    if (cells[i].pinned) continue;
    evicted->push_back(i);
    --candidates;
  }
  const int keep = std::min<int>(entropy, static_cast<int>(evicted->size()));
  const int drop = static_cast<int>(evicted->size()) - keep;
  if (drop == 0) {
    evicted->clear();
    return;
  }
  std::nth_element(evicted->begin(), evicted->begin() + drop, evicted->end(),
                   WorseCell{cells});
  evicted->resize(drop);
  std::sort(evicted->begin(), evicted->end());
}

}  // namespace

void SelectEvicted(absl::Span<const Cell> cells, const PolicyConfig& config,
                   std::vector<int32_t>* evicted, int pinned) {
  evicted->clear();
  const int n = static_cast<int>(cells.size());
  const std::optional<int> budget = config.Budget();
  if (!budget || n <= *budget) return;
  if (pinned < 0) {
    pinned = static_cast<int>(std::count_if(
        cells.begin(), cells.end(), [](const Cell& c) { return c.pinned; }));
  }
  if (pinned > 0 && config.kind != PolicyKind::kRecompute) {
    SelectEvictedPinned(cells, config, *budget, pinned, evicted);
    return;
  }
  const int excess = n - *budget;
  switch (config.kind) {
    case PolicyKind::kFull:  // unreachable: no budget
      return;
    case PolicyKind::kWindow:
    case PolicyKind::kRecompute:
      for (int i = 0; i < excess; ++i) evicted->push_back(i);
      return;
    case PolicyKind::kStreaming:
      for (int i = 0; i < excess; ++i) evicted->push_back(config.sinks + i);
      return;
    case PolicyKind::kSirLlm: {
      // Candidates: everything between the sinks and the recent window; all
      // but `entropy` of them go, `excess` in all. `evicted` doubles as the
      // candidate buffer so a Trim per token allocates nothing.
      for (int i = config.sinks; i < n - config.window; ++i) {
        evicted->push_back(i);
      }
      std::nth_element(evicted->begin(), evicted->begin() + excess,
                       evicted->end(), WorseCell{cells});
      evicted->resize(excess);
      // Usually one cell per token; a prefill chunk or a restore under a
      // smaller policy evicts more.
      std::sort(evicted->begin(), evicted->end());
      return;
    }
  }
}

std::vector<int32_t> SelectKept(absl::Span<const Cell> cells,
                                const PolicyConfig& config) {
  std::vector<int32_t> evicted;
  SelectEvicted(cells, config, &evicted);
  std::vector<int32_t> kept;
  kept.reserve(cells.size() - evicted.size());
  size_t next = 0;
  for (int32_t i = 0; i < static_cast<int32_t>(cells.size()); ++i) {
    if (next < evicted.size() && evicted[next] == i) {
      ++next;
    } else {
      kept.push_back(i);
    }
  }
  return kept;
}

}  // namespace sinkserve::memory
