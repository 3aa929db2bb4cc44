#include "service/security/tenant_limits.h"

#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "memory/session_state.h"

namespace sinkserve::service::security {

absl::StatusOr<std::map<std::string, TenantLimits>> ParseTenantLimits(
    std::string_view text, std::string_view source, const TenantLimits& defaults) {
  std::map<std::string, TenantLimits> out;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(absl::string_view(text.data(), text.size()), '\n')) {
    ++line_number;
    line = line.substr(0, line.find('#'));
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (fields.empty()) continue;
    auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tenant limits ", absl::string_view(source.data(), source.size()), " line ", line_number,
          ": ", why, " (expected TENANT [sessions=N] [streams=N] [tokens_per_minute=N])"));
    };
    if (absl::Status s =
            memory::ValidateTenantName(std::string_view(fields[0].data(), fields[0].size()));
        !s.ok())
      return bad(s.message());
    const std::string tenant(fields[0]);
    if (out.count(tenant) != 0) return bad(absl::StrCat("tenant ", tenant, " listed twice"));
    TenantLimits limits = defaults;
    for (size_t i = 1; i < fields.size(); ++i) {
      const size_t eq = fields[i].find('=');
      int64_t value = 0;
      if (eq == absl::string_view::npos || !absl::SimpleAtoi(fields[i].substr(eq + 1), &value) ||
          value < 0) {
        return bad(absl::StrCat("'", fields[i], "' is not NAME=N with N >= 0"));
      }
      const absl::string_view name = fields[i].substr(0, eq);
      if (name == "sessions") {
        limits.sessions = value;
      } else if (name == "streams") {
        limits.streams = value;
      } else if (name == "tokens_per_minute") {
        limits.tokens_per_minute = value;
      } else {
        return bad(absl::StrCat("unknown limit '", name, "'"));
      }
    }
    out.emplace(tenant, limits);
  }
  return out;
}

TenantQuotas::TenantQuotas(TenantLimits defaults, std::map<std::string, TenantLimits> overrides)
    : defaults_(defaults), overrides_(overrides.begin(), overrides.end()) {}

TenantLimits TenantQuotas::LimitsOf(std::string_view tenant) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = overrides_.find(tenant);
  return it != overrides_.end() ? it->second : defaults_;
}

void TenantQuotas::SetOverrides(std::map<std::string, TenantLimits> overrides) {
  std::lock_guard<std::mutex> lock(mu_);
  overrides_ = std::map<std::string, TenantLimits, std::less<>>(overrides.begin(), overrides.end());
}

absl::Status TenantQuotas::AcquireStream(const std::string& tenant) {
  const int64_t limit = LimitsOf(tenant).streams;
  std::lock_guard<std::mutex> lock(mu_);
  Usage& usage = usage_[tenant];
  if (limit > 0 && usage.streams >= limit) {
    return absl::ResourceExhaustedError(
        absl::StrCat("tenant ", tenant, " has its limit of ", limit,
                     " open Chat streams on this server; retry after one of them ends"));
  }
  ++usage.streams;
  return absl::OkStatus();
}

void TenantQuotas::ReleaseStream(const std::string& tenant) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = usage_.find(tenant);
  if (it != usage_.end() && it->second.streams > 0) --it->second.streams;
}

int64_t TenantQuotas::Sum(const Window& w, int64_t now_s) {
  int64_t sum = 0;
  for (size_t i = 0; i < w.tokens.size(); ++i) {
    if (now_s - w.second[i] < 60) sum += w.tokens[i];
  }
  return sum;
}

absl::Status TenantQuotas::AdmitTurn(const std::string& tenant, absl::Time now) {
  const int64_t limit = LimitsOf(tenant).tokens_per_minute;
  if (limit <= 0) return absl::OkStatus();
  const int64_t now_s = absl::ToUnixSeconds(now);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = usage_.find(tenant);
  if (it == usage_.end()) return absl::OkStatus();
  const Window& w = it->second.window;
  int64_t used = Sum(w, now_s);
  if (used < limit) return absl::OkStatus();
  // The wait until the oldest seconds leave the window bring it under.
  int64_t wait_s = 60;
  for (int64_t age = 59; age >= 0; --age) {
    const size_t slot = static_cast<size_t>((now_s - age) % 60);
    if (w.second[slot] == now_s - age) used -= w.tokens[slot];
    if (used < limit) {
      wait_s = 60 - age;
      break;
    }
  }
  return absl::ResourceExhaustedError(
      absl::StrCat("tenant ", tenant, " generated its limit of ", limit,
                   " tokens in the last minute on this server; retry in ", wait_s, " s"));
}

void TenantQuotas::AddTokens(const std::string& tenant, int64_t tokens, absl::Time now) {
  if (tokens <= 0) return;
  const int64_t now_s = absl::ToUnixSeconds(now);
  const size_t slot = static_cast<size_t>(now_s % 60);
  std::lock_guard<std::mutex> lock(mu_);
  Window& w = usage_[tenant].window;
  if (w.second[slot] != now_s) {
    w.second[slot] = now_s;
    w.tokens[slot] = 0;
  }
  w.tokens[slot] += tokens;
}

}  // namespace sinkserve::service::security
