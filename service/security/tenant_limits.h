// Per-tenant limits and the counters that enforce the per-replica ones:
// concurrent Chat streams and generated tokens per minute. (Sessions stored
// are counted by the SessionManager, which knows the store.)
//
// Limits file (`serve --tenant-limits`), one tenant per line, '#' comments:
//   TENANT [sessions=N] [streams=N] [tokens_per_minute=N]
// A limit a line leaves out is the server's default (--tenant-max-sessions,
// ...); 0 is unlimited.
#ifndef SINKSERVE_SERVICE_SECURITY_TENANT_LIMITS_H_
#define SINKSERVE_SERVICE_SECURITY_TENANT_LIMITS_H_

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace sinkserve::service::security {

struct TenantLimits {
  int64_t sessions = 0;           // stored sessions
  int64_t streams = 0;            // concurrent Chat streams on one replica
  int64_t tokens_per_minute = 0;  // generated on one replica, last 60 s
};

// Overrides by tenant, from a limits file's text over `defaults`.
absl::StatusOr<std::map<std::string, TenantLimits>> ParseTenantLimits(std::string_view text,
                                                                      std::string_view source,
                                                                      const TenantLimits& defaults);

class TenantQuotas {
 public:
  TenantQuotas(TenantLimits defaults, std::map<std::string, TenantLimits> overrides);

  TenantLimits LimitsOf(std::string_view tenant) const;
  // New overrides (SIGHUP); counters are kept.
  void SetOverrides(std::map<std::string, TenantLimits> overrides);

  // A stream of `tenant` opens: RESOURCE_EXHAUSTED (with a retry hint) when
  // it already has its limit open, else counted until ReleaseStream.
  absl::Status AcquireStream(const std::string& tenant);
  void ReleaseStream(const std::string& tenant);

  // Whether `tenant` may start a turn: it generated fewer than its
  // tokens_per_minute in the 60 s before `now`. A turn admitted just under
  // the limit may go over it by its own length; the next waits.
  absl::Status AdmitTurn(const std::string& tenant, absl::Time now);
  void AddTokens(const std::string& tenant, int64_t tokens, absl::Time now);

 private:
  // Tokens per second over the last 60 s, as a ring indexed by unix second.
  struct Window {
    std::array<int64_t, 60> tokens{};
    std::array<int64_t, 60> second{};
  };
  struct Usage {
    int64_t streams = 0;
    Window window;
  };
  static int64_t Sum(const Window& w, int64_t now_s);

  const TenantLimits defaults_;
  mutable std::mutex mu_;
  std::map<std::string, TenantLimits, std::less<>> overrides_;  // guarded by mu_
  std::map<std::string, Usage, std::less<>> usage_;             // guarded by mu_
};

}  // namespace sinkserve::service::security

#endif  // SINKSERVE_SERVICE_SECURITY_TENANT_LIMITS_H_
