#include "service/metrics.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace sinkserve::service {
namespace {

// prometheus-cpp's Histogram throws on unsorted bounds; check up front so a
// bad option is a status, not an exception at construction.
absl::Status CheckBuckets(absl::string_view name,
                          const std::vector<double>& bounds) {
  if (bounds.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": no buckets"));
  }
  for (size_t i = 0; i < bounds.size(); ++i) {
    if (!std::isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1])) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, ": bucket bounds must be finite and strictly increasing"));
    }
  }
  return absl::OkStatus();
}

bool ValidSeconds(double s) { return std::isfinite(s) && s >= 0; }

prometheus::Histogram& AddHistogram(prometheus::Registry& registry,
                                    const std::string& name,
                                    const std::string& help,
                                    const std::vector<double>& bounds) {
  return prometheus::BuildHistogram()
      .Name(name)
      .Help(help)
      .Register(registry)
      .Add({}, bounds);
}

prometheus::Counter& AddCounter(prometheus::Registry& registry,
                                const std::string& name,
                                const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(registry).Add(
      {});
}

prometheus::Gauge& AddGauge(prometheus::Registry& registry,
                            const std::string& name, const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(registry).Add(
      {});
}

}  // namespace

absl::StatusOr<std::unique_ptr<Metrics>> Metrics::Create(
    const MetricsOptions& options) {
  for (const auto& [name, bounds] :
       {std::pair{"time_to_first_token_buckets",
                  &options.time_to_first_token_buckets},
        std::pair{"inter_token_buckets", &options.inter_token_buckets},
        std::pair{"checkpoint_buckets", &options.checkpoint_buckets},
        std::pair{"batch_buckets", &options.batch_buckets}}) {
    absl::Status status = CheckBuckets(name, *bounds);
    if (!status.ok()) return status;
  }
  if (options.exposer_threads < 1) {
    return absl::InvalidArgumentError("metrics exposer needs >= 1 thread");
  }
  std::unique_ptr<Metrics> metrics(new Metrics(options));
  if (options.listen_address.empty()) return metrics;
  // civetweb reports bind failures by throwing from the constructor.
  try {
    metrics->exposer_ = std::make_unique<prometheus::Exposer>(
        options.listen_address, options.exposer_threads);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on \"", options.listen_address,
                     "\": ", e.what()));
  }
  metrics->exposer_->RegisterCollectable(metrics->registry_);
  const std::vector<int> ports = metrics->exposer_->GetListeningPorts();
  if (ports.empty()) {
    return absl::UnavailableError(absl::StrCat(
        "metrics exposer on \"", options.listen_address, "\" has no port"));
  }
  metrics->port_ = ports.front();
  return metrics;
}

Metrics::Metrics(const MetricsOptions& options)
    : registry_(std::make_shared<prometheus::Registry>()) {
  prometheus::Registry& r = *registry_;
  time_to_first_token_ = &AddHistogram(
      r, "sinkserve_time_to_first_token_seconds",
      "From a user turn's arrival to its first generated token.",
      options.time_to_first_token_buckets);
  inter_token_ = &AddHistogram(r, "sinkserve_inter_token_latency_seconds",
                               "Between consecutive tokens of one turn.",
                               options.inter_token_buckets);
  checkpoint_seconds_ = &AddHistogram(
      r, "sinkserve_checkpoint_duration_seconds",
      "Writing one session snapshot to the store.", options.checkpoint_buckets);
  batch_turns_ = &AddHistogram(r, "sinkserve_batch_turns",
                              "Turns advanced by one batched forward step.",
                              options.batch_buckets);
  checkpoint_bytes_ = &AddCounter(r, "sinkserve_checkpoint_bytes_total",
                                  "Bytes of session snapshots written.");
  generated_ = &AddCounter(r, "sinkserve_generated_tokens_total",
                           "Tokens generated across all sessions.");
  replayed_turns_ = &AddCounter(r, "sinkserve_replayed_turns_total",
                                "Turns retried by turn_id and answered from their stored "
                                "result instead of running again.");
  pins_ = &prometheus::BuildCounter()
               .Name("sinkserve_pins_total")
               .Help("Pins made: a session's system prompt or a turn kept whatever the "
                     "cache policy evicts.")
               .Register(r);
  for (const char* what : {"system_prompt", "turn"}) pins_->Add({{"what", what}});
  pin_refusals_ = &AddCounter(r, "sinkserve_pin_refusals_total",
                              "Turns refused because pinning them would exceed the "
                              "session's pinned-cell limit.");
  unpins_ = &AddCounter(r, "sinkserve_unpins_total", "Pinned turns let go (UnpinTurn).");
  auth_mode_ = &prometheus::BuildGauge()
                    .Name("sinkserve_auth_mode")
                    .Help(
                        "1 for the authentication mode in force (none = anyone who reaches "
                        "the port is the default tenant).")
                    .Register(r);
  for (const char* mode : {"none", "api-keys", "jwt", "api-keys,jwt"})
    auth_mode_->Add({{"mode", mode}});
  auth_failures_ = &AddCounter(r, "sinkserve_auth_failures_total",
                               "Calls refused as UNAUTHENTICATED (no, malformed or unknown "
                               "credentials).");
  admin_actions_ = &AddCounter(r, "sinkserve_admin_actions_total",
                               "Admin calls on other tenants' sessions (each is audited).");
  quota_refusals_ = &prometheus::BuildCounter()
                         .Name("sinkserve_quota_refusals_total")
                         .Help("Requests refused by a per-tenant limit.")
                         .Register(r);
  for (const char* what : {"sessions", "streams", "tokens"}) quota_refusals_->Add({{"what", what}});
  pinned_cells_ = &AddGauge(r, "sinkserve_pinned_cells",
                            "Pinned KV cache cells in the sessions in memory.");
  prompt_tokens_ = &AddCounter(r, "sinkserve_prompt_tokens_total",
                               "Prompt tokens fed (user turns and markup).");
  errors_ = &prometheus::BuildCounter()
                 .Name("sinkserve_errors_total")
                 .Help("RPCs that ended with an error, by gRPC status code.")
                 .Register(r);
  evictions_ = &prometheus::BuildCounter()
                    .Name("sinkserve_evicted_cells_total")
                    .Help("KV cache cells evicted, by cache policy.")
                    .Register(r);
  // Zero-valued children for the known label values, so that a dashboard's
  // rate() has a series before the first error or eviction.
  for (const char* code :
       {"CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
        "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
        "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
        "UNAUTHENTICATED"}) {
    errors_->Add({{"code", code}});
  }
  for (const char* policy : {"window", "streaming", "sirllm"}) {
    evictions_->Add({{"policy", policy}});
  }
  active_streams_ = &AddGauge(r, "sinkserve_active_streams",
                              "Chat streams currently open.");
  sessions_in_memory_ = &AddGauge(r, "sinkserve_sessions_in_memory",
                                  "Sessions whose KV cache is resident.");
  sessions_in_store_ = &AddGauge(r, "sinkserve_sessions_in_store",
                                 "Sessions persisted in the session store.");
  cache_cells_ = &prometheus::BuildGauge()
                      .Name("sinkserve_cache_cells")
                      .Help("KV cache cells in use in the sessions in memory, by policy.")
                      .Register(r);
  for (const char* policy : {"full", "window", "streaming", "sirllm", "recompute"}) {
    cache_cells_->Add({{"policy", policy}});
  }
  session_memory_bytes_ = &AddGauge(
      r, "sinkserve_session_memory_bytes",
      "K/V rows and cell metadata of the sessions in memory (--max-session-memory-bytes).");
  checkpoint_durable_ = &AddHistogram(
      r, "sinkserve_checkpoint_durable_seconds",
      "From a turn's end until its checkpoint is durable (what its TurnEnd waited).",
      options.checkpoint_buckets);
  admission_wait_ = &AddHistogram(
      r, "sinkserve_turn_admission_wait_seconds",
      "New turns held back while checkpoints queued past --checkpoint-buffer-bytes.",
      options.checkpoint_buckets);
  checkpoint_queue_ = &AddGauge(r, "sinkserve_checkpoint_queue",
                                "Checkpoints captured and not yet durable.");
  checkpoint_queue_bytes_ = &AddGauge(r, "sinkserve_checkpoint_queue_bytes",
                                      "Staging bytes of the checkpoints not yet durable.");
  takeovers_ = &prometheus::BuildHistogram()
                    .Name("sinkserve_session_takeover_seconds")
                    .Help("Sessions this server took the lease of, by cause (free, handed_off, "
                          "owner_gone, expired), and how long taking it took.")
                    .Register(r);
  takeover_buckets_ = options.checkpoint_buckets;
  for (const char* cause : {"free", "handed_off", "owner_gone", "expired"}) {
    takeovers_->Add({{"cause", cause}}, takeover_buckets_);
  }
  restore_seconds_ = &AddHistogram(r, "sinkserve_session_restore_seconds",
                                   "Loading a session from the store into memory.",
                                   options.checkpoint_buckets);
  sessions_owned_ = &AddGauge(r, "sinkserve_sessions_owned",
                              "Sessions whose lease this server holds (shared store).");
  lease_renewals_ = &AddCounter(r, "sinkserve_lease_renewals_total",
                                "Session leases renewed in the shared store.");
  lease_renewal_errors_ = &AddCounter(r, "sinkserve_lease_renewal_errors_total",
                                      "Lease renewals the shared store did not answer.");
  lease_losses_ = &AddCounter(
      r, "sinkserve_lease_losses_total",
      "Session leases found taken by another server or run out: sessions dropped unwritten.");
  lease_releases_ = &AddCounter(r, "sinkserve_lease_releases_total",
                                "Session leases given up (idle, handed off, drained).");
  fenced_writes_ = &AddCounter(
      r, "sinkserve_fenced_writes_total",
      "Writes the shared store refused because another server owns the session now.");
}

Metrics::~Metrics() = default;

std::string Metrics::RenderText() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

void Metrics::ObserveTimeToFirstToken(double seconds) {
  if (ValidSeconds(seconds)) time_to_first_token_->Observe(seconds);
}

void Metrics::ObserveInterTokenLatency(double seconds) {
  if (ValidSeconds(seconds)) inter_token_->Observe(seconds);
}

void Metrics::ObserveCheckpoint(double seconds, int64_t bytes) {
  if (ValidSeconds(seconds)) checkpoint_seconds_->Observe(seconds);
  if (bytes > 0) checkpoint_bytes_->Increment(static_cast<double>(bytes));
}

void Metrics::ObserveCheckpointDurable(double seconds) {
  if (ValidSeconds(seconds)) checkpoint_durable_->Observe(seconds);
}

void Metrics::ObserveAdmissionWait(double seconds) {
  if (ValidSeconds(seconds)) admission_wait_->Observe(seconds);
}

void Metrics::ObserveBatch(int64_t turns) {
  if (turns > 0) batch_turns_->Observe(static_cast<double>(turns));
}

void Metrics::AddGenerated(int64_t n) {
  if (n > 0) generated_->Increment(static_cast<double>(n));
}

void Metrics::IncReplayedTurns() { replayed_turns_->Increment(); }
void Metrics::IncPins(std::string_view what) {
  pins_->Add({{"what", std::string(what)}}).Increment();
}
void Metrics::IncPinRefusals() { pin_refusals_->Increment(); }
void Metrics::IncUnpins() { unpins_->Increment(); }
void Metrics::SetPinnedCells(int64_t n) { pinned_cells_->Set(static_cast<double>(n)); }

void Metrics::AddPromptTokens(int64_t n) {
  if (n > 0) prompt_tokens_->Increment(static_cast<double>(n));
}

void Metrics::SetAuthMode(std::string_view mode) {
  for (const char* m : {"none", "api-keys", "jwt", "api-keys,jwt"})
    auth_mode_->Add({{"mode", m}}).Set(mode == m ? 1 : 0);
}
void Metrics::IncAuthFailures() { auth_failures_->Increment(); }
void Metrics::IncAdminActions() { admin_actions_->Increment(); }
void Metrics::IncQuotaRefusals(std::string_view what) {
  quota_refusals_->Add({{"what", std::string(what)}}).Increment();
}

void Metrics::IncError(std::string_view code) {
  // Family::Add returns the existing child for known labels.
  errors_->Add({{"code", code.empty() ? "UNKNOWN" : std::string(code)}})
      .Increment();
}

void Metrics::AddEvictions(std::string_view policy, int64_t cells) {
  if (cells <= 0) return;
  evictions_->Add({{"policy", std::string(policy)}})
      .Increment(static_cast<double>(cells));
}

void Metrics::SetActiveStreams(int64_t n) {
  active_streams_->Set(static_cast<double>(n));
}
void Metrics::IncActiveStreams() { active_streams_->Increment(); }
void Metrics::DecActiveStreams() { active_streams_->Decrement(); }

void Metrics::SetSessionsInMemory(int64_t n) {
  sessions_in_memory_->Set(static_cast<double>(n));
}

void Metrics::SetSessionsInStore(int64_t n) {
  sessions_in_store_->Set(static_cast<double>(n));
}

void Metrics::SetCacheCells(std::string_view policy, int64_t n) {
  cache_cells_->Add({{"policy", std::string(policy)}}).Set(static_cast<double>(n));
}

void Metrics::SetSessionMemoryBytes(int64_t n) {
  session_memory_bytes_->Set(static_cast<double>(n));
}

void Metrics::ObserveTakeover(std::string_view cause, double seconds) {
  if (!ValidSeconds(seconds)) return;
  takeovers_->Add({{"cause", std::string(cause)}}, takeover_buckets_).Observe(seconds);
}

void Metrics::ObserveRestore(double seconds) {
  if (ValidSeconds(seconds)) restore_seconds_->Observe(seconds);
}

void Metrics::SetOwnership(const OwnershipTotals& totals) {
  std::lock_guard<std::mutex> lock(ownership_mu_);
  auto advance = [](prometheus::Counter* counter, uint64_t now, uint64_t before) {
    if (now > before) counter->Increment(static_cast<double>(now - before));
  };
  sessions_owned_->Set(static_cast<double>(totals.owned));
  advance(lease_renewals_, totals.renewals, last_ownership_.renewals);
  advance(lease_renewal_errors_, totals.renewal_errors, last_ownership_.renewal_errors);
  advance(lease_losses_, totals.losses, last_ownership_.losses);
  advance(lease_releases_, totals.releases, last_ownership_.releases);
  advance(fenced_writes_, totals.fenced_writes, last_ownership_.fenced_writes);
  last_ownership_ = totals;
}

void Metrics::SetCheckpointQueue(int64_t checkpoints, int64_t bytes) {
  checkpoint_queue_->Set(static_cast<double>(std::max<int64_t>(checkpoints, 0)));
  checkpoint_queue_bytes_->Set(static_cast<double>(std::max<int64_t>(bytes, 0)));
}

}  // namespace sinkserve::service
