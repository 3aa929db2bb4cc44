#include "service/cli/policy_flags.h"

#include "absl/strings/match.h"

namespace sinkserve::cli {

void AddPolicyFlags(std::vector<FlagSpec>* specs, const std::string& default_policy) {
  specs->push_back({"policy", FlagKind::kString, default_policy,
                    "KV cache policy: full | window | streaming | sirllm | recompute, or a "
                    "compact form such as streaming(4,252) or sirllm(4,126,126,0.9)"});
  specs->push_back({"sinks", FlagKind::kInt, "4", "attention sinks kept (streaming, sirllm)"});
  specs->push_back({"window", FlagKind::kInt, "0",
                    "recent cells kept (window, streaming, sirllm, recompute)"});
  specs->push_back({"entropy", FlagKind::kInt, "0", "high-surprisal cells kept (sirllm)"});
  specs->push_back({"decay", FlagKind::kDouble, "1.0",
                    "score decay per round, in (0, 1] (sirllm)"});
}

absl::StatusOr<memory::PolicyConfig> PolicyFromFlags(const FlagSet& flags) {
  const std::string policy = flags.GetString("policy");
  if (absl::StrContains(policy, "(") || absl::StrContains(policy, ":")) {
    for (const char* name : {"sinks", "window", "entropy", "decay"}) {
      if (flags.Has(name)) {
        return absl::InvalidArgumentError(
            absl::StrCat("--", name, " cannot be combined with --policy=", policy));
      }
    }
    return memory::PolicyConfig::Parse(policy);
  }
  return memory::PolicyConfig::FromFlags(policy, flags.GetInt("sinks"), flags.GetInt("window"),
                                         flags.GetInt("entropy"), flags.GetDouble("decay"));
}

}  // namespace sinkserve::cli
