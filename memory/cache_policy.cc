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
  for (absl::string_view item : absl::StrSplit(spec.substr(colon + 1), ',')) {
    const size_t eq = item.find('=');
    if (eq == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cache policy '", spec, "': expected key=value, got '", item, "'"));
    }
    const absl::string_view key =
        absl::StripAsciiWhitespace(item.substr(0, eq));
    const std::optional<Field> field = FieldFromName(key);
    if (!field) {
      return absl::InvalidArgumentError(
          absl::StrCat("cache policy '", spec, "': unknown key '", key,
                       "' (keys: sinks, window, entropy, decay)"));
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
  return absl::OkStatus();
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
  if (fields.empty()) return out;
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

void SelectEvicted(absl::Span<const Cell> cells, const PolicyConfig& config,
                   std::vector<int32_t>* evicted) {
  evicted->clear();
  const int n = static_cast<int>(cells.size());
  const std::optional<int> budget = config.Budget();
  if (!budget || n <= *budget) return;
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
      // Lower score first; equal scores: the newer (higher index) first, so
      // the older is kept.
      auto worse = [cells](int32_t a, int32_t b) {
        const float sa = RankKey(cells[a].score);
        const float sb = RankKey(cells[b].score);
        return sa < sb || (sa == sb && a > b);
      };
      std::nth_element(evicted->begin(), evicted->begin() + excess,
                       evicted->end(), worse);
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
