// `sinkserve serve`: the gRPC chat service (service/server/).
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "engine/backend.h"
#include "memory/cache_policy.h"
#include "service/cli/backend_flags.h"
#include "service/cli/commands.h"
#include "service/cli/policy_flags.h"
#include "service/cli/security_flags.h"
#include "service/server/log.h"
#include "service/server/server.h"

namespace sinkserve::cli {
namespace {

constexpr char kSynopsis[] =
    "--model PATH (--db DIR | --store rados://POOL?conf=PATH) [--listen ADDR] [--metrics-listen "
    "ADDR] [--threads N]\n"
    "         [--max-sessions-in-memory N] [--session-idle-seconds S]\n"
    "         [--max-session-memory-bytes B] [--default-policy streaming(4,252)] [limits]\n"
    "         [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]] [--auth api-keys --api-keys "
    "FILE]\n"
    "Serves sinkserve.v1.SinkServe (bidirectional Chat streams over durable\n"
    "sessions) and grpc.health.v1 on --listen (reflection with --reflection),\n"
    "Prometheus metrics on --metrics-listen. Health is NOT_SERVING while the model\n"
    "loads and while draining. SIGTERM (or SIGINT) drains: new work is refused,\n"
    "running turns finish (up to --drain-grace-seconds), every session is\n"
    "checkpointed, then the process exits 0. SIGHUP re-reads --api-keys and\n"
    "--tenant-limits and reopens --audit-log; certificate files are re-read on\n"
    "change. Port 0 picks a free port; the chosen one is printed as\n"
    "`listening on HOST:PORT` on stdout, then `ready` once serving.";

std::string WithPort(const std::string& address, int port) {
  const size_t colon = address.rfind(':');
  return absl::StrCat(colon == std::string::npos ? address : address.substr(0, colon), ":", port);
}

}  // namespace

int RunServe(const std::vector<std::string>& args) {
  std::vector<FlagSpec> specs = {
      {"model", FlagKind::kString, "", "GGUF model file"},
      {"store", FlagKind::kString, "",
       "a store shared by several servers instead of --db: "
       "rados://POOL?conf=PATH[&ns=NAMESPACE][&id=CLIENT] (Ceph RADOS)"},
      {"db", FlagKind::kString, "",
       "session store directory (created if missing); `none` keeps nothing: sessions live "
       "only in memory and are gone when they leave it (benchmarks; ./none for a directory)"},
      {"lease-seconds", FlagKind::kDouble, "2",
       "with --store: how long a session's lease lasts unrenewed (how long a replica that "
       "stops answering keeps its sessions; a dead one loses them at once)"},
      {"advertise-address", FlagKind::kString, "",
       "with --store: host:port where the other replicas reach this one for session "
       "handoffs; empty = --listen (an unspecified host becomes the host name)"},
      {"listen", FlagKind::kString, "127.0.0.1:50051", "gRPC listen address"},
      {"metrics-listen", FlagKind::kString, "", "Prometheus /metrics address; empty = off"},
      {"threads", FlagKind::kInt, "0", "CPU threads of the decoder; 0 = one per core"},
      {"kv-dtype", FlagKind::kString, "f32",
       "K/V element type of every session: f32, f16 or bf16 (half the memory); a stored "
       "session of another type is refused"},
      {"max-sessions-in-memory", FlagKind::kInt, "256",
       "sessions kept in RAM; detached ones (no stream attached) beyond are checkpointed "
       "and dropped, least recently used first; attaching when all are attached is "
       "RESOURCE_EXHAUSTED"},
      {"session-idle-seconds", FlagKind::kDouble, "600",
       "a detached session unused this long is checkpointed and dropped from RAM "
       "(it loads back on next use); 0 = never"},
      {"max-session-memory-bytes", FlagKind::kInt, "0",
       "K/V bytes (rows + cell metadata) the sessions in RAM may hold; beyond it detached "
       "ones are checkpointed and dropped, least recently used first (attached ones "
       "stay); 0 = no limit"},
      {"max-sessions", FlagKind::kInt, "0",
       "sessions the store may hold (creating more is RESOURCE_EXHAUSTED); 0 = no limit"},
      {"default-policy", FlagKind::kString, "",
       "cache policy of sessions that do not choose one, compact form "
       "(streaming(4,252)); overrides --policy and its flags"},
      {"max-message-bytes", FlagKind::kInt, "1048576",
       "largest request message (RESOURCE_EXHAUSTED beyond)"},
      {"max-prompt-tokens", FlagKind::kInt, "8192",
       "tokens one user turn may add (RESOURCE_EXHAUSTED beyond)"},
      {"max-session-cells", FlagKind::kInt, "65536",
       "KV cells one session may keep (allocated up front; RESOURCE_EXHAUSTED beyond); "
       "also the size of a `full` cache"},
      {"max-tokens", FlagKind::kInt, "256", "tokens a turn generates when it does not say"},
      {"min-window", FlagKind::kInt, "16",
       "fewest window cells pins may leave a session (its pinned system prompt and turns take "
       "at most window - this); a system prompt that would leave fewer is refused at creation"},
      {"max-tokens-limit", FlagKind::kInt, "8192", "most tokens a turn may ask for"},
      {"prefill-chunk", FlagKind::kInt, "256",
       "prompt tokens per forward step of one session (bounds others' latency)"},
      {"max-batch", FlagKind::kInt, "256", "most sessions in one forward pass"},
      {"stream-buffer", FlagKind::kInt, "32",
       "responses queued per stream before its turn pauses (backpressure)"},
      {"max-waiting-turns", FlagKind::kInt, "4",
       "turns that may wait on a stream behind the running one (pipelining); one more gets "
       "RESOURCE_EXHAUSTED as a TurnError"},
      {"temperature", FlagKind::kDouble, "0.8", "default sampling temperature; 0 = greedy"},
      {"seed", FlagKind::kInt, "-1",
       "RNG seed of new sessions that set none; -1 = a random one per session"},
      {"drain-grace-seconds", FlagKind::kDouble, "30",
       "on SIGTERM, how long running turns may go on before they are cancelled"},
      {"sync", FlagKind::kBool, "true", "fsync each checkpoint (power-loss safe)"},
      {"checkpoint-threads", FlagKind::kInt, "2",
       "threads writing turn checkpoints (decoding never waits for them; a TurnEnd does)"},
      {"checkpoint-buffer-bytes", FlagKind::kInt, "1073741824",
       "captured checkpoints not yet durable may hold this much; beyond it new turns wait "
       "for admission (running turns go on)"}};
  AddServerSecurityFlags(&specs);
  AddPolicyFlags(&specs, "streaming(4,252)");
  AddBackendFlags(&specs);
  FlagSet flags("serve", kSynopsis, std::move(specs));
  if (int rc = ParseOrExit(flags, args); rc >= 0) return rc;
  if (int rc = CheckBackendFlag(flags, "serve"); rc >= 0) return rc;
  if (!flags.Has("model") || flags.Has("db") == flags.Has("store")) {
    std::cerr << "sinkserve serve: --model and one of --db or --store are required\n";
    return kExitUsage;
  }
  absl::StatusOr<memory::PolicyConfig> policy =
      flags.Has("default-policy") ? memory::PolicyConfig::Parse(flags.GetString("default-policy"))
                                  : PolicyFromFlags(flags);
  if (!policy.ok()) {
    std::cerr << "sinkserve serve: " << policy.status().message() << "\n";
    return kExitUsage;
  }
  for (const char* name : {"threads", "max-sessions-in-memory", "max-sessions", "max-message-bytes",
                           "max-prompt-tokens", "max-tokens", "max-tokens-limit", "prefill-chunk",
                           "max-batch", "stream-buffer", "max-session-cells",
                           "checkpoint-threads", "max-waiting-turns", "min-window"}) {
    const int64_t v = flags.GetInt(name);
    const bool may_be_zero = std::string(name) == "threads" || std::string(name) == "max-sessions" ||
                             std::string(name) == "max-waiting-turns" ||
                             std::string(name) == "min-window";
    if (v < (may_be_zero ? 0 : 1) || v > (int64_t{1} << 30)) {
      std::cerr << "sinkserve serve: --" << name << " out of range: " << v << "\n";
      return kExitUsage;
    }
  }

  const double idle_seconds = flags.GetDouble("session-idle-seconds");
  if (!(idle_seconds >= 0) || idle_seconds > 1e9) {
    std::cerr << "sinkserve serve: --session-idle-seconds out of range: " << idle_seconds << "\n";
    return kExitUsage;
  }
  for (const char* name : {"max-session-memory-bytes", "checkpoint-buffer-bytes"}) {
    if (flags.GetInt(name) < 0) {
      std::cerr << "sinkserve serve: --" << name << " must be >= 0\n";
      return kExitUsage;
    }
  }

  auto kv_dtype = engine::ParseKvDtype(flags.GetString("kv-dtype"));
  if (!kv_dtype.ok()) {
    std::cerr << "sinkserve serve: --kv-dtype: " << kv_dtype.status().message() << "\n";
    return kExitUsage;
  }

  service::ServerOptions options;
  options.model.path = flags.GetString("model");
  options.model.threads = flags.GetInt("threads");
  options.model.make_backend = [&flags, dtype = *kv_dtype,
                                threads = static_cast<int>(flags.GetInt("threads"))](
                                   std::shared_ptr<const engine::ModelWeights> weights) {
    return BackendFromFlags(flags, std::move(weights), threads, dtype);
  };
  options.db = flags.GetString("db");
  options.store = flags.GetString("store");
  options.listen = flags.GetString("listen");
  options.advertise_address = flags.GetString("advertise-address");
  const double lease_seconds = flags.GetDouble("lease-seconds");
  if (!(lease_seconds >= 0.3 && lease_seconds <= 3600)) {
    std::cerr << "sinkserve serve: --lease-seconds must be in [0.3, 3600]\n";
    return 2;
  }
  options.lease = absl::Seconds(lease_seconds);
  options.metrics_listen = flags.GetString("metrics-listen");
  options.max_message_bytes = flags.GetInt("max-message-bytes");
  options.sync = flags.GetBool("sync");
  options.sessions.max_sessions_in_memory = flags.GetInt("max-sessions-in-memory");
  options.sessions.max_sessions = flags.GetInt("max-sessions");
  options.sessions.idle_timeout = absl::Seconds(idle_seconds);
  options.sessions.max_session_memory_bytes = flags.GetInt("max-session-memory-bytes");
  options.sessions.checkpoint_threads = static_cast<int>(flags.GetInt("checkpoint-threads"));
  options.sessions.checkpoint_buffer_bytes = flags.GetInt("checkpoint-buffer-bytes");
  options.sessions.default_policy = *policy;
  options.sessions.default_sampling.temperature = flags.GetDouble("temperature");
  options.sessions.random_seed = flags.GetInt("seed") < 0;
  options.sessions.default_sampling.seed = std::max<int64_t>(0, flags.GetInt("seed"));
  options.sessions.max_step_tokens = flags.GetInt("prefill-chunk");
  options.sessions.max_session_cells = flags.GetInt("max-session-cells");
  options.limits.turn.max_prompt_tokens = flags.GetInt("max-prompt-tokens");
  options.limits.turn.min_window = static_cast<int>(flags.GetInt("min-window"));
  options.limits.turn.default_max_tokens = flags.GetInt("max-tokens");
  options.limits.turn.max_tokens_limit = flags.GetInt("max-tokens-limit");
  options.limits.stream_buffer = flags.GetInt("stream-buffer");
  options.limits.max_waiting_turns = flags.GetInt("max-waiting-turns");
  options.scheduler.max_batch = flags.GetInt("max-batch");
  if (absl::Status s = ServerSecurityFromFlags(flags, &options); !s.ok()) {
    std::cerr << "sinkserve serve: " << s.message() << "\n";
    return kExitUsage;
  }

  // SIGTERM/SIGINT are taken by sigwait below: block them before any thread
  // (gRPC's, the scheduler) starts, so every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  absl::StatusOr<std::unique_ptr<service::Server>> server =
      service::Server::Start(options, [&](int port, int metrics_port) {
        std::string line =
            absl::StrCat("sinkserve serve: listening on ", WithPort(options.listen, port));
        if (metrics_port > 0) absl::StrAppend(&line, " (metrics on port ", metrics_port, ")");
        std::printf("%s\n", line.c_str());
        std::fflush(stdout);
        service::ServerLog("loading ", options.model.path);
      });
  if (!server.ok()) return Fail("serve", server.status());
  service::ServerLog("serving (policy ", policy->ToString(), ", store ",
                     options.store.empty() ? options.db : options.store, ")");
  std::printf("sinkserve serve: ready\n");  // health is SERVING from here on
  std::fflush(stdout);

  int signal_number = 0;
  while (sigwait(&signals, &signal_number) == 0 && signal_number == SIGHUP) {
    // Reload errors are logged; the old keys and limits stay in force.
    (void)(*server)->Reload();
  }
  service::ServerLog("got signal ", signal_number, ", draining");
  absl::Status drained = (*server)->Drain(absl::Seconds(flags.GetDouble("drain-grace-seconds")));
  server->reset();
  return drained.ok() ? kExitOk : kExitError;
}

}  // namespace sinkserve::cli
