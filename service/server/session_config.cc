#include "service/server/session_config.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace sinkserve::service {
namespace {

v1::PolicyKind ToProtoKind(memory::PolicyKind kind) {
  switch (kind) {
    case memory::PolicyKind::kFull:
      return v1::POLICY_FULL;
    case memory::PolicyKind::kWindow:
      return v1::POLICY_WINDOW;
    case memory::PolicyKind::kStreaming:
      return v1::POLICY_STREAMING;
    case memory::PolicyKind::kSirLlm:
      return v1::POLICY_SIRLLM;
    case memory::PolicyKind::kRecompute:
      return v1::POLICY_UNSPECIFIED;  // not offered by the API
  }
  return v1::POLICY_UNSPECIFIED;
}

void ToProtoPolicy(const memory::PolicyConfig& policy, v1::CachePolicy* out) {
  out->set_kind(ToProtoKind(policy.kind));
  out->set_sinks(policy.sinks);
  out->set_window(policy.window);
  out->set_entropy(policy.entropy);
  out->set_decay(policy.decay);
  out->set_max_pinned_cells(policy.max_pinned);
}

void ToProtoSampling(const engine::SamplerOptions& s, v1::SamplingParams* out) {
  out->set_temperature(s.temperature);
  out->set_top_k(s.top_k < 0 ? 0 : s.top_k);
  out->set_top_p(s.top_p);
  out->set_min_p(s.min_p);
  out->set_repeat_penalty(s.repeat_penalty);
  out->set_presence_penalty(s.presence_penalty);
  out->set_seed(s.seed);
}

int64_t UnixMillis(absl::Time t) { return absl::ToUnixMillis(t); }

}  // namespace

// What the store's metadata says (no sampling, template or system prompt:
// those live in the session's opaque config until it is loaded).
void SetConfigInfo(const engine::SessionConfig& c, v1::SessionInfo* info) {
  ToProtoPolicy(c.policy, info->mutable_config()->mutable_policy());
  ToProtoSampling(c.sampling, info->mutable_config()->mutable_sampling());
  info->mutable_config()->set_system_prompt(c.system_prompt);
  info->mutable_config()->set_pin_system_prompt(c.pin_system_prompt);
  info->mutable_config()->set_chat_template(c.chat_template);
  info->set_chat_template(c.chat_template);
}

// Pins as the cache holds them (cells that arrived).
void SetPinsInfo(const memory::KvCacheState& cache, v1::SessionInfo* info) {
  int64_t pinned = 0;
  for (const memory::Pin& p : cache.pins) {
    v1::Pin* pin = info->add_pins();
    pin->set_turn_id(p.label);
    pin->set_cells(static_cast<uint32_t>(p.size()));
    pinned += p.size();
  }
  info->set_pinned_cells(static_cast<uint32_t>(pinned));
}

v1::SessionInfo InfoFromStored(const memory::SessionInfo& stored) {
  v1::SessionInfo info;
  info.set_session_id(stored.id);
  if (absl::StatusOr<memory::PolicyConfig> policy = memory::PolicyConfig::Parse(stored.policy);
      policy.ok()) {
    ToProtoPolicy(*policy, info.mutable_config()->mutable_policy());
  }
  info.set_cells_cached(stored.cells);
  info.set_rounds(stored.rounds);
  info.set_tokens_seen(stored.tokens_seen);
  info.set_created_unix_ms(UnixMillis(stored.created_at));
  info.set_updated_unix_ms(UnixMillis(stored.updated_at));
  return info;
}

absl::StatusOr<memory::PolicyConfig> PolicyFromProto(const v1::CachePolicy& p,
                                                     const memory::PolicyConfig& default_policy) {
  if (p.kind() == v1::POLICY_UNSPECIFIED) return default_policy;
  memory::PolicyConfig policy;
  switch (p.kind()) {
    case v1::POLICY_FULL:
      policy.kind = memory::PolicyKind::kFull;
      break;
    case v1::POLICY_WINDOW:
      policy.kind = memory::PolicyKind::kWindow;
      break;
    case v1::POLICY_STREAMING:
      policy.kind = memory::PolicyKind::kStreaming;
      break;
    case v1::POLICY_SIRLLM:
      policy.kind = memory::PolicyKind::kSirLlm;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("unknown policy kind ", p.kind()));
  }
  policy.sinks = p.sinks() == 0 ? 4 : static_cast<int>(p.sinks());
  policy.window = static_cast<int>(std::min<uint32_t>(p.window(), 1u << 30));
  policy.entropy = static_cast<int>(std::min<uint32_t>(p.entropy(), 1u << 30));
  policy.decay = p.decay() == 0 ? 1.0f : p.decay();
  policy.max_pinned = static_cast<int>(std::min<uint32_t>(p.max_pinned_cells(), 1u << 30));
  return policy;
}

absl::StatusOr<engine::SamplerOptions> ApplySampling(const engine::SamplerOptions& base,
                                                     const v1::SamplingParams& params) {
  engine::SamplerOptions s = base;
  if (params.has_temperature()) s.temperature = params.temperature();
  if (params.has_top_k()) s.top_k = params.top_k();
  if (params.has_top_p()) s.top_p = params.top_p();
  if (params.has_min_p()) s.min_p = params.min_p();
  if (params.has_repeat_penalty()) s.repeat_penalty = params.repeat_penalty();
  if (params.has_presence_penalty()) s.presence_penalty = params.presence_penalty();
  if (params.has_seed()) s.seed = params.seed();
  if (!std::isfinite(s.temperature) || s.temperature < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be >= 0, got ", s.temperature));
  }
  if (!(s.top_p >= 0 && s.top_p <= 1) || !(s.min_p >= 0 && s.min_p <= 1)) {
    return absl::InvalidArgumentError("top_p and min_p must be in [0, 1]");
  }
  if (!(s.repeat_penalty > 0) || !std::isfinite(s.repeat_penalty) ||
      !std::isfinite(s.presence_penalty)) {
    return absl::InvalidArgumentError("repeat_penalty must be > 0 and penalties finite");
  }
  return s;
}

}  // namespace sinkserve::service
