// The server's Prometheus metrics, served in text format on their own listen
// address (so that scraping never competes with the gRPC port).
//
// Every method is thread-safe and cheap (atomic adds; labelled series take a
// short lock in prometheus-cpp's Family to find the child), so the scheduler
// and the stream reactors call them directly.
#ifndef SINKSERVE_SERVICE_METRICS_H_
#define SINKSERVE_SERVICE_METRICS_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace prometheus {
class Counter;
class Exposer;
template <typename T>
class Family;
class Gauge;
class Histogram;
class Registry;
}  // namespace prometheus

namespace sinkserve::service {

struct MetricsOptions {
  // Where /metrics is served ("127.0.0.1:9464", "0.0.0.0:9464", port 0 picks
  // a free port); "" serves nothing (RenderText still works).
  // Default: "".
  std::string listen_address;
  // HTTP worker threads of the exposer.
  // Default: 2.
  int exposer_threads = 2;
  // Upper bounds (seconds) of the histogram buckets, strictly increasing.
  // Default: 5 ms .. 30 s (a prefill on a long prompt may take seconds).
  std::vector<double> time_to_first_token_buckets = {
      0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
  // Default: 0.5 ms .. 1 s.
  std::vector<double> inter_token_buckets = {
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1};
  // Default: 1 ms .. 10 s.
  std::vector<double> checkpoint_buckets = {
      0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10};
  // Default: 1 .. 256 turns per forward step.
  std::vector<double> batch_buckets = {1, 2, 4, 8, 16, 32, 64, 128, 256};
};

class Metrics {
 public:
  // Bad buckets or thread count are INVALID_ARGUMENT; an address that cannot
  // be bound (in use, malformed) is UNAVAILABLE naming it.
  static absl::StatusOr<std::unique_ptr<Metrics>> Create(
      const MetricsOptions& options);

  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // The port /metrics listens on (the real one when asked for port 0); 0
  // without an exposer.
  int port() const { return port_; }

  // The registry in Prometheus text exposition format (what a scrape gets).
  std::string RenderText() const;

  // Latencies, in seconds. Negative or non-finite values are dropped.
  void ObserveTimeToFirstToken(double seconds);
  void ObserveInterTokenLatency(double seconds);
  void ObserveCheckpoint(double seconds, int64_t bytes);
  // From a turn's end (its checkpoint captured) until that checkpoint is
  // durable: how long its TurnEnd waited for storage.
  void ObserveCheckpointDurable(double seconds);
  // How long a new turn waited for admission while the checkpoint writers
  // were over --checkpoint-buffer-bytes (backpressure).
  void ObserveAdmissionWait(double seconds);
  // Turns advanced by one batched forward step (continuous batching at work).
  void ObserveBatch(int64_t turns);

  // Counters; n <= 0 is ignored.
  void AddGenerated(int64_t n);
  void AddPromptTokens(int64_t n);
  // A turn answered from its stored result (same turn_id as the session's
  // last completed turn) instead of running again.
  void IncReplayedTurns();
  // Pins: `what` is "system_prompt" or "turn"; a refusal is a pin over the
  // session's limit (the turn is refused).
  void IncPins(std::string_view what);
  void IncPinRefusals();
  void IncUnpins();
  // `code` is the gRPC code name ("NOT_FOUND"); "" counts as "UNKNOWN".
  void IncError(std::string_view code);
  // Security: the authentication mode in force (1 for it, 0 for the
  // others), calls refused for their credentials, admin actions on other
  // tenants, and per-tenant quota refusals (what: sessions, streams, tokens).
  void SetAuthMode(std::string_view mode);
  void IncAuthFailures();
  void IncAdminActions();
  void IncQuotaRefusals(std::string_view what);
  // `policy` as in PolicyKind, lower case ("sirllm"); cells evicted.
  void AddEvictions(std::string_view policy, int64_t cells);

  // Gauges.
  void SetActiveStreams(int64_t n);
  void IncActiveStreams();
  void DecActiveStreams();
  void SetSessionsInMemory(int64_t n);
  void SetSessionsInStore(int64_t n);
  // Cells in use in the KV caches of the sessions in memory under `policy`
  // (memory::PolicyKindName).
  void SetCacheCells(std::string_view policy, int64_t n);
  // Bytes those sessions hold in K/V rows and cell metadata
  // (SessionMemoryBytes), what --max-session-memory-bytes bounds.
  void SetSessionMemoryBytes(int64_t n);
  // Pinned cells in the sessions in memory.
  void SetPinnedCells(int64_t n);
  // Checkpoints captured and not yet durable, and the bytes they hold.
  void SetCheckpointQueue(int64_t checkpoints, int64_t bytes);

  // Sessions shared by several servers (a store with leases).
  // A session this server took over, by how (memory::AcquireCauseName:
  // "free", "handed_off", "owner_gone", "expired"), and how long it took.
  void ObserveTakeover(std::string_view cause, double seconds);
  // Loading a session from the store into memory (restore).
  void ObserveRestore(double seconds);
  // The lease and store totals since start (cumulative values; the counters
  // advance by the difference to the last call).
  struct OwnershipTotals {
    int64_t owned = 0;
    uint64_t renewals = 0;
    uint64_t renewal_errors = 0;
    uint64_t losses = 0;
    uint64_t releases = 0;
    uint64_t fenced_writes = 0;
  };
  void SetOwnership(const OwnershipTotals& totals);

 private:
  Metrics(const MetricsOptions& options);

  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Histogram* time_to_first_token_ = nullptr;
  prometheus::Histogram* inter_token_ = nullptr;
  prometheus::Histogram* checkpoint_seconds_ = nullptr;
  prometheus::Histogram* batch_turns_ = nullptr;
  prometheus::Counter* checkpoint_bytes_ = nullptr;
  prometheus::Counter* generated_ = nullptr;
  prometheus::Counter* replayed_turns_ = nullptr;
  prometheus::Family<prometheus::Counter>* pins_ = nullptr;
  prometheus::Counter* pin_refusals_ = nullptr;
  prometheus::Counter* unpins_ = nullptr;
  prometheus::Family<prometheus::Gauge>* auth_mode_ = nullptr;
  prometheus::Counter* auth_failures_ = nullptr;
  prometheus::Counter* admin_actions_ = nullptr;
  prometheus::Family<prometheus::Counter>* quota_refusals_ = nullptr;
  prometheus::Gauge* pinned_cells_ = nullptr;
  prometheus::Counter* prompt_tokens_ = nullptr;
  prometheus::Family<prometheus::Counter>* errors_ = nullptr;
  prometheus::Family<prometheus::Counter>* evictions_ = nullptr;
  prometheus::Gauge* active_streams_ = nullptr;
  prometheus::Gauge* sessions_in_memory_ = nullptr;
  prometheus::Gauge* sessions_in_store_ = nullptr;
  prometheus::Family<prometheus::Gauge>* cache_cells_ = nullptr;
  prometheus::Gauge* session_memory_bytes_ = nullptr;
  prometheus::Histogram* checkpoint_durable_ = nullptr;
  prometheus::Histogram* admission_wait_ = nullptr;
  prometheus::Gauge* checkpoint_queue_ = nullptr;
  prometheus::Gauge* checkpoint_queue_bytes_ = nullptr;
  prometheus::Family<prometheus::Histogram>* takeovers_ = nullptr;
  std::vector<double> takeover_buckets_;
  prometheus::Histogram* restore_seconds_ = nullptr;
  prometheus::Gauge* sessions_owned_ = nullptr;
  prometheus::Counter* lease_renewals_ = nullptr;
  prometheus::Counter* lease_renewal_errors_ = nullptr;
  prometheus::Counter* lease_losses_ = nullptr;
  prometheus::Counter* lease_releases_ = nullptr;
  prometheus::Counter* fenced_writes_ = nullptr;
  std::mutex ownership_mu_;
  OwnershipTotals last_ownership_;  // guarded by ownership_mu_
  // Declared last: destroyed first, so no scrape runs on a dying registry.
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
};

}  // namespace sinkserve::service

#endif  // SINKSERVE_SERVICE_METRICS_H_
