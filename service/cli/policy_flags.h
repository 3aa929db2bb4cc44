// Flags shared by every subcommand that runs a cache policy (generate,
// perplexity, serve, ...): --policy --sinks --window --entropy --decay.
#ifndef SINKSERVE_SERVICE_CLI_POLICY_FLAGS_H_
#define SINKSERVE_SERVICE_CLI_POLICY_FLAGS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "memory/cache_policy.h"
#include "service/cli/flags.h"

namespace sinkserve::cli {

// Appends the policy flags to `specs`; `default_policy` is --policy's default
// ("full" for one-shot tools).
void AddPolicyFlags(std::vector<FlagSpec>* specs, const std::string& default_policy);

// The validated policy the flags describe. --policy also takes the compact
// forms PolicyConfig::Parse reads ("streaming(4,252)"), and then no other
// policy flag may be given.
absl::StatusOr<memory::PolicyConfig> PolicyFromFlags(const FlagSet& flags);

}  // namespace sinkserve::cli

#endif  // SINKSERVE_SERVICE_CLI_POLICY_FLAGS_H_
