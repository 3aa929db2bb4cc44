// Sessions' configuration between the API and the engine: the proto's cache
// policy and sampling settings as the engine takes them, and what
// SessionInfo reports of a session in memory or in the store.
#ifndef SINKSERVE_SERVICE_SERVER_SESSION_CONFIG_H_
#define SINKSERVE_SERVICE_SERVER_SESSION_CONFIG_H_

#include "absl/status/statusor.h"
#include "engine/sampler.h"
#include "engine/session.h"
#include "memory/cache_policy.h"
#include "memory/kv_cache.h"
#include "memory/session_state.h"
#include "sinkserve/v1/sinkserve.pb.h"

namespace sinkserve::service {

// The policy a CachePolicy asks for; POLICY_UNSPECIFIED is `default_policy`
// whole. Not validated here (the caller says which field is bad).
absl::StatusOr<memory::PolicyConfig> PolicyFromProto(const v1::CachePolicy& policy,
                                                     const memory::PolicyConfig& default_policy);

// `base` with the fields `params` sets; INVALID_ARGUMENT for values out of range.
absl::StatusOr<engine::SamplerOptions> ApplySampling(const engine::SamplerOptions& base,
                                                     const v1::SamplingParams& params);

// The session's configuration (policy, sampling, system prompt and whether
// it is pinned, chat template) into `info`.
void SetConfigInfo(const engine::SessionConfig& config, v1::SessionInfo* info);

// Pins as the cache holds them (cells that arrived): pinned_cells and pins.
void SetPinsInfo(const memory::KvCacheState& cache, v1::SessionInfo* info);

// What the store's header says of a session (no sampling, template or system
// prompt: those live in the session's opaque config until it is loaded).
v1::SessionInfo InfoFromStored(const memory::SessionInfo& stored);

}  // namespace sinkserve::service

#endif  // SINKSERVE_SERVICE_SERVER_SESSION_CONFIG_H_
