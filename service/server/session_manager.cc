#include "service/server/session_manager.h"

#include <cmath>
#include <optional>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "memory/session_leases.h"
#include "memory/session_state.h"
#include "memory/status_macros.h"
#include "service/security/caller.h"
#include "service/server/log.h"
#include "service/server/status_util.h"

namespace sinkserve::service {
int64_t SessionMemoryBytes(const engine::Session& session) {
  const engine::Sequence& sequence = session.sequence();
  const engine::ModelConfig& model = sequence.backend()->config();
  const engine::KvStorage& kv = *sequence.kv();
  const int64_t capacity = kv.capacity();
  const int64_t rows = capacity * model.n_layers * 2 * model.n_kv_heads * model.head_dim *
                       static_cast<int64_t>(engine::KvDtypeBytes(kv.dtype()));
  // KvCache keeps cells and their slots in buffers of twice the capacity (so
  // eviction slides a range instead of copying) plus a free list and
  // positions of one capacity each; the last checkpoint's metadata, the base
  // of the next delta, is about one more capacity of cells.
  const int64_t metadata =
      capacity * static_cast<int64_t>(3 * sizeof(memory::Cell) + 4 * sizeof(int32_t));
  return rows + metadata;
}

absl::StatusOr<std::unique_ptr<SessionManager>> SessionManager::Create(
    ServingModel* model, memory::SessionStore* store, Metrics* metrics,
    const SessionManagerOptions& options) {
  if (options.max_sessions_in_memory < 1) {
    return absl::InvalidArgumentError("max_sessions_in_memory must be >= 1");
  }
  if (options.idle_timeout < absl::ZeroDuration() || options.max_session_memory_bytes < 0) {
    return absl::InvalidArgumentError(
        "idle_timeout and max_session_memory_bytes must be >= 0 (0 = no limit)");
  }
  if (!options.clock) return absl::InvalidArgumentError("clock must be set");
  if (options.checkpoint_threads < 1 || options.checkpoint_buffer_bytes < 0) {
    return absl::InvalidArgumentError(
        "checkpoint_threads must be >= 1 and checkpoint_buffer_bytes >= 0");
  }
  auto manager =
      std::unique_ptr<SessionManager>(new SessionManager(model, store, metrics, options));
  memory::ListOptions list;
  list.max_sessions = 10000;
  while (true) {
    SINKSERVE_ASSIGN_OR_RETURN(memory::ListPage page, store->List(list));
    manager->stored_sessions_ += page.sessions.size() + page.bad.size();
    for (const memory::SessionInfo& info : page.sessions) {
      ++manager->tenant_sessions_[security::SplitScopedId(info.id).tenant];
    }
    for (const memory::BadSession& bad : page.bad) {
      ++manager->tenant_sessions_[security::SplitScopedId(bad.id).tenant];
    }
    if (page.next_start_after.empty()) break;
    list.start_after = page.next_start_after;
  }
  memory::CheckpointPipelineOptions pipeline;
  pipeline.writer_threads = options.checkpoint_threads;
  pipeline.sync = options.sync;
  pipeline.buffer_bytes = options.checkpoint_buffer_bytes;
  pipeline.on_room = options.on_checkpoint_room;
  manager->pipeline_ = std::make_unique<memory::CheckpointPipeline>(store, pipeline);
  manager->UpdateGauges();
  return manager;
}

absl::StatusOr<engine::SessionConfig> SessionManager::EngineConfig(
    const v1::SessionConfig& config, std::vector<std::string>* warnings) const {
  engine::SessionConfig out;
  SINKSERVE_ASSIGN_OR_RETURN(out.policy,
                             PolicyFromProto(config.policy(), options_.default_policy));
  if (absl::Status s = out.policy.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("bad cache policy: ", s.message()));
  }
  if (std::optional<int> budget = out.policy.Budget();
      budget.has_value() && *budget > options_.max_session_cells) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "policy ", out.policy.ToString(), " keeps ", *budget,
        " cells; this server allows at most ", options_.max_session_cells, " per session"));
  }
  SINKSERVE_ASSIGN_OR_RETURN(out.sampling,
                             ApplySampling(options_.default_sampling, config.sampling()));
  if (options_.random_seed && !config.sampling().has_seed()) {
    out.sampling.seed = std::random_device()() | (uint64_t{std::random_device()()} << 32);
  }
  absl::StatusOr<ChatTemplateSelection> selection =
      SelectChatTemplate(config.chat_template(), model_->chat_info);
  if (!selection.ok()) {
    return absl::InvalidArgumentError(selection.status().message());
  }
  if (!selection->warning.empty()) warnings->push_back(selection->warning);
  out.chat_template = std::string(ChatFamilyName(selection->chat_template.family));
  out.system_prompt = config.system_prompt();
  // Default on with a system prompt: an assistant must not forget who it is.
  out.pin_system_prompt = !out.system_prompt.empty() && (!config.has_pin_system_prompt() ||
                                                         config.pin_system_prompt());
  out.max_step_tokens = options_.max_step_tokens;
  if (!out.policy.Budget().has_value()) {
    const int context = model_->backend->config().context_length;
    out.capacity = options_.full_capacity > 0 ? options_.full_capacity : context;
    if (out.capacity <= 0 || out.capacity > options_.max_session_cells) {
      out.capacity = options_.max_session_cells;
    }
  }
  return out;
}

absl::StatusOr<std::unique_ptr<engine::Session>> SessionManager::NewSession(
    const std::string& id, const v1::SessionConfig& config, std::vector<std::string>* warnings) {
  SINKSERVE_ASSIGN_OR_RETURN(engine::SessionConfig engine_config, EngineConfig(config, warnings));
  if (options_.check_new_session) {
    SINKSERVE_RETURN_IF_ERROR(options_.check_new_session(engine_config));
  }
  if (options_.max_sessions > 0 && stored_sessions_ >= options_.max_sessions) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the server holds its limit of ", options_.max_sessions, " sessions"));
  }
  const std::string tenant = security::SplitScopedId(id).tenant;
  if (options_.tenant_session_limit) {
    const int64_t limit = options_.tenant_session_limit(tenant);
    if (limit > 0 && tenant_sessions_[tenant] >= limit) {
      if (metrics_ != nullptr) metrics_->IncQuotaRefusals("sessions");
      return absl::ResourceExhaustedError(
          absl::StrCat("tenant ", tenant, " holds its limit of ", limit,
                       " stored sessions; delete one (DeleteSession) and retry"));
    }
  }
  SINKSERVE_RETURN_IF_ERROR(MakeRoom());
  SINKSERVE_ASSIGN_OR_RETURN(
      std::unique_ptr<engine::Session> session,
      engine::Session::Create(id, model_->backend.get(), model_->fingerprint, engine_config));
  // Durable from the start: a created session is listed and survives restarts.
  SINKSERVE_RETURN_IF_ERROR(CheckpointSession(session.get()));
  ++stored_sessions_;
  ++tenant_sessions_[tenant];
  return session;
}

absl::StatusOr<AttachResult> SessionManager::Attach(const std::string& id, bool create_if_missing,
                                                    const v1::SessionConfig& config) {
  SINKSERVE_RETURN_IF_ERROR(memory::ValidateSessionId(id));
  AttachResult result;
  if (auto it = sessions_.find(id); it != sessions_.end() && it->second.evicted) {
    if (it->second.attached || pipeline_->Busy(id)) {
      return absl::UnavailableError(absl::StrCat(
          "session ", id, " moved to another server and its stale copy is still leaving this "
          "one; retry"));
    }
    Erase(it);
  }
  if (auto it = sessions_.find(id); it != sessions_.end()) {
    if (it->second.attached) {
      return absl::FailedPreconditionError(
          absl::StrCat("session ", id, " is attached to another stream"));
    }
    it->second.attached = true;
    lru_.erase(it->second.lru);
    result.session = it->second.session.get();
    SweepAndLog();
    return result;
  }
  const absl::Time load_start = absl::Now();
  absl::StatusOr<memory::LoadedSession> loaded = store_->Load(id, model_->fingerprint);
  if (loaded.ok()) {
    SINKSERVE_RETURN_IF_ERROR(MakeRoom());
    SINKSERVE_ASSIGN_OR_RETURN(std::unique_ptr<engine::Session> session,
                               engine::Session::Restore(model_->backend.get(), model_->fingerprint,
                                                        std::move(loaded->state), loaded->version));
    if (metrics_ != nullptr) metrics_->ObserveRestore(absl::ToDoubleSeconds(absl::Now() - load_start));
    result.session = session.get();
    result.restored = true;
    Insert(std::move(session), /*attached=*/true);
    SweepAndLog();
    return result;
  }
  if (loaded.status().code() != absl::StatusCode::kNotFound) return loaded.status();
  if (!create_if_missing) {
    return NoSessionError(id);
  }
  SINKSERVE_ASSIGN_OR_RETURN(std::unique_ptr<engine::Session> session,
                             NewSession(id, config, &result.warnings));
  result.session = session.get();
  result.created = true;
  Insert(std::move(session), /*attached=*/true);
  SweepAndLog();
  return result;
}

void SessionManager::Detach(const std::string& id) {
  auto it = sessions_.find(id);
  if (it == sessions_.end() || !it->second.attached) return;
  it->second.attached = false;
  it->second.lru = lru_.insert(lru_.end(), id);
  if (it->second.evicted) {
    TryDrop(it);
    return;
  }
  it->second.last_used = options_.clock();
  // Over the limit while everything was attached: shrink now.
  if (static_cast<int>(sessions_.size()) > options_.max_sessions_in_memory) {
    if (absl::Status s = MakeRoom(); !s.ok()) {
      ServerLog("cannot drop a session from memory: ", s.ToString());
    }
  }
  SweepAndLog();
}

absl::StatusOr<v1::SessionInfo> SessionManager::CreateDetached(const std::string& id,
                                                               const v1::SessionConfig& config) {
  SINKSERVE_RETURN_IF_ERROR(memory::ValidateSessionId(id));
  SINKSERVE_ASSIGN_OR_RETURN(bool exists, store_->Exists(id));
  if (exists || sessions_.count(id) > 0) {
    return absl::AlreadyExistsError(absl::StrCat("session ", id, " already exists"));
  }
  std::vector<std::string> warnings;
  SINKSERVE_ASSIGN_OR_RETURN(std::unique_ptr<engine::Session> session,
                             NewSession(id, config, &warnings));
  v1::SessionInfo info = InfoOf(*session);
  Insert(std::move(session), /*attached=*/false);
  SweepAndLog();
  return info;
}

absl::StatusOr<v1::SessionInfo> SessionManager::Info(const std::string& id) const {
  SINKSERVE_RETURN_IF_ERROR(memory::ValidateSessionId(id));
  if (auto it = sessions_.find(id); it != sessions_.end()) return InfoOf(*it->second.session);
  // Not in memory: its metadata chain (no K/V rows) carries the config too.
  absl::StatusOr<memory::LoadedSession> stored =
      store_->LoadMetadata(id, memory::SessionStore::kAnyModel);
  if (!stored.ok()) {
    if (stored.status().code() == absl::StatusCode::kNotFound) {
      return NoSessionError(id);
    }
    return stored.status();
  }
  v1::SessionInfo info = InfoFromStored(memory::SessionInfo::Of(stored->state));
  SINKSERVE_ASSIGN_OR_RETURN(engine::SessionConfig config,
                             engine::Session::ConfigOf(stored->state));
  SetConfigInfo(config, &info);
  SetPinsInfo(stored->state.cache, &info);
  return info;
}

absl::StatusOr<v1::ListSessionsResponse> SessionManager::List(
    const v1::ListSessionsRequest& request) const {
  memory::ListOptions list;
  list.start_after = request.page_token();
  list.max_sessions =
      request.page_size() == 0 ? 100 : std::min<uint32_t>(request.page_size(), 10000);
  SINKSERVE_ASSIGN_OR_RETURN(memory::ListPage page, store_->List(list));
  v1::ListSessionsResponse response;
  for (const memory::SessionInfo& stored : page.sessions) {
    auto it = sessions_.find(stored.id);
    *response.add_sessions() =
        it != sessions_.end() ? InfoOf(*it->second.session) : InfoFromStored(stored);
  }
  for (const memory::BadSession& bad : page.bad) {
    v1::UnreadableSession* unreadable = response.add_unreadable();
    unreadable->set_session_id(bad.id);
    unreadable->set_error(bad.status.ToString());
  }
  response.set_next_page_token(page.next_start_after);
  return response;
}

absl::Status SessionManager::Delete(const std::string& id) {
  SINKSERVE_RETURN_IF_ERROR(memory::ValidateSessionId(id));
  bool in_memory = false;
  if (auto it = sessions_.find(id); it != sessions_.end()) {
    if (it->second.attached) {
      return absl::FailedPreconditionError(
          absl::StrCat("session ", id, " is attached to a stream"));
    }
    // Its checkpoints still being written would land after the delete.
    pipeline_->Flush(id);
    Erase(it);
    in_memory = true;
  }
  pipeline_->Forget(id);
  absl::Status s = store_->Delete(id);
  if (s.ok()) {
    --stored_sessions_;
    if (auto t = tenant_sessions_.find(security::SplitScopedId(id).tenant);
        t != tenant_sessions_.end() && t->second > 0) {
      --t->second;
    }
    if (options_.sync) s = store_->Sync();
  }
  if (s.code() == absl::StatusCode::kNotFound) {
    s = in_memory ? absl::OkStatus() : NoSessionError(id);
  }
  UpdateGauges();
  SweepAndLog();
  return s;
}

absl::Status SessionManager::Checkpoint(engine::Session* session) {
  absl::Status s = CheckpointSession(session);
  SweepAndLog();
  return s;
}

void SessionManager::CheckpointTurn(engine::Session* session,
                                    std::function<void(const absl::Status&)> done) {
  SubmitCheckpoint(session, std::move(done));
}

void SessionManager::WaitForCheckpoints() { pipeline_->FlushAll(); }

bool SessionManager::AdmitTurns() const { return !pipeline_->OverBudget(); }

memory::CheckpointPipelineStats SessionManager::checkpoint_stats() const {
  return pipeline_->stats();
}

void SessionManager::SubmitCheckpoint(engine::Session* session,
                                      std::function<void(const absl::Status&)> done) {
  absl::StatusOr<memory::PendingCheckpoint> captured =
      session->Capture(/*full=*/pipeline_->NeedsFull(session->id()));
  if (!captured.ok()) {
    done(captured.status());
    return;
  }
  Metrics* metrics = metrics_;
  memory::CheckpointPipeline* pipeline = pipeline_.get();
  pipeline_->Submit(
      std::move(*captured),
      [metrics, pipeline, id = session->id(), on_fenced = options_.on_fenced,
       done = std::move(done)](const absl::StatusOr<memory::CheckpointOutcome>& outcome) {
        if (!outcome.ok() && memory::IsFenced(outcome.status()) && on_fenced) on_fenced(id);
        if (metrics != nullptr) {
          if (outcome.ok() && outcome->wrote) {
            metrics->ObserveCheckpoint(absl::ToDoubleSeconds(outcome->result.latency),
                                       static_cast<int64_t>(outcome->result.bytes_written));
          }
          if (outcome.ok()) {
            metrics->ObserveCheckpointDurable(absl::ToDoubleSeconds(outcome->queued_to_durable));
          }
          const memory::CheckpointPipelineStats stats = pipeline->stats();
          // Still counts this one: it leaves the queue after its callback.
          metrics->SetCheckpointQueue(stats.queued - 1, stats.queued_bytes);
        }
        done(outcome.status());
      });
  if (metrics_ != nullptr) {
    const memory::CheckpointPipelineStats stats = pipeline_->stats();
    metrics_->SetCheckpointQueue(stats.queued, stats.queued_bytes);
  }
}

absl::Status SessionManager::CheckpointSession(engine::Session* session) {
  if (!session->dirty() && !pipeline_->NeedsFull(session->id()) &&
      !pipeline_->Busy(session->id())) {
    return absl::OkStatus();
  }
  auto result = std::make_shared<absl::Status>();
  SubmitCheckpoint(session, [result](const absl::Status& s) { *result = s; });
  pipeline_->Flush(session->id());
  UpdateGauges();
  return *result;
}

absl::Status SessionManager::CheckpointAll() {
  // Captured first, then waited for together: the writers work in parallel.
  auto first = std::make_shared<absl::Status>();
  auto mu = std::make_shared<std::mutex>();
  for (auto& [id, entry] : sessions_) {
    engine::Session* session = entry.session.get();
    if (!session->dirty() && !pipeline_->NeedsFull(id)) continue;
    SubmitCheckpoint(session, [first, mu](const absl::Status& s) {
      std::lock_guard<std::mutex> lock(*mu);
      if (first->ok() && !s.ok()) *first = s;
    });
  }
  pipeline_->FlushAll();
  UpdateGauges();
  std::lock_guard<std::mutex> lock(*mu);
  return *first;
}

absl::Status SessionManager::Drop(std::map<std::string, Entry>::iterator it) {
  // A session that cannot be checkpointed stays: dropping it would lose turns.
  SINKSERVE_RETURN_IF_ERROR(CheckpointSession(it->second.session.get()));
  if (!TryDrop(it)) {
    return absl::UnavailableError(
        absl::StrCat("session ", it->first, " is not durable yet; it stays in memory"));
  }
  return absl::OkStatus();
}

bool SessionManager::TryDrop(std::map<std::string, Entry>::iterator it) {
  engine::Session* session = it->second.session.get();
  const std::string& id = it->first;
  if (pipeline_->Busy(id)) return false;
  if (!it->second.evicted && (session->dirty() || pipeline_->NeedsFull(id))) {
    SubmitCheckpoint(session, [id](const absl::Status& s) {
      if (!s.ok()) ServerLog("checkpoint of idle session ", id, " failed: ", s.ToString());
    });
    return false;
  }
  pipeline_->Forget(id);
  Erase(it);
  return true;
}

void SessionManager::Erase(std::map<std::string, Entry>::iterator it) {
  const std::string id = it->first;
  if (!it->second.attached) lru_.erase(it->second.lru);
  memory_bytes_ -= it->second.bytes;
  sessions_.erase(it);
  evicted_.erase(id);
  if (options_.on_resident) options_.on_resident(id, false);
}

Surrender SessionManager::TrySurrender(const std::string& id) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return Surrender::kGone;
  if (it->second.attached) return Surrender::kAttached;
  if (TryDrop(it)) {
    UpdateGauges();
    return Surrender::kGone;
  }
  return Surrender::kPending;
}

void SessionManager::Evict(const std::string& id) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  if (!it->second.evicted) ServerLog("session ", id, " is owned by another server now: dropping it");
  it->second.evicted = true;
  evicted_.insert(id);
  if (!it->second.attached && TryDrop(it)) UpdateGauges();
}

absl::Status SessionManager::MakeRoom() {
  absl::Status first;
  // Drop() erases from lru_, so step past each entry before trying it.
  for (auto next = lru_.begin();
       next != lru_.end() &&
       static_cast<int>(sessions_.size()) >= options_.max_sessions_in_memory;) {
    const std::string& id = *next++;
    absl::Status s = Drop(sessions_.find(id));
    if (first.ok() && !s.ok()) first = s;
  }
  UpdateGauges();
  if (static_cast<int>(sessions_.size()) < options_.max_sessions_in_memory) {
    return absl::OkStatus();
  }
  if (!first.ok()) return first;
  return absl::ResourceExhaustedError(absl::StrCat("all ", sessions_.size(),
                                                   " sessions in memory are attached (limit ",
                                                   options_.max_sessions_in_memory, ")"));
}

absl::Status SessionManager::Sweep() { return DropIdle(); }

absl::Status SessionManager::DropIdle() {
  absl::Status first;
  const bool idle_limit = options_.idle_timeout > absl::ZeroDuration();
  const absl::Time now = options_.clock();
  // lru_ is in order of last use, so the idle ones come first, then those
  // the memory budget drops.
  const size_t before = sessions_.size();
  // Stale copies whose last (refused) write was still under way.
  for (auto next = evicted_.begin(); next != evicted_.end();) {
    auto it = sessions_.find(*next++);
    if (!it->second.attached) TryDrop(it);
  }
  for (auto next = lru_.begin(); next != lru_.end();) {
    const std::string& id = *next++;
    auto it = sessions_.find(id);
    const bool idle = idle_limit && now - it->second.last_used >= options_.idle_timeout;
    const bool over_budget =
        options_.max_session_memory_bytes > 0 && memory_bytes_ > options_.max_session_memory_bytes;
    if (!idle && !over_budget) break;
    // Not durable yet: its checkpoint is under way and a later sweep drops it.
    TryDrop(it);
  }
  // Runs after every turn: skip the O(sessions) gauge update when idle.
  if (sessions_.size() != before) UpdateGauges();
  return first;
}

void SessionManager::SweepAndLog() {
  if (absl::Status s = DropIdle(); !s.ok()) {
    ServerLog("cannot drop a session from memory: ", s.ToString());
  }
}

void SessionManager::Insert(std::unique_ptr<engine::Session> session, bool attached) {
  std::string id = session->id();
  Entry& entry = sessions_[id];
  entry.bytes = SessionMemoryBytes(*session);
  memory_bytes_ += entry.bytes;
  entry.session = std::move(session);
  entry.attached = attached;
  entry.last_used = options_.clock();
  if (!attached) entry.lru = lru_.insert(lru_.end(), id);
  UpdateGauges();
  if (options_.on_resident) options_.on_resident(id, true);
}

void SessionManager::UpdateGauges() const {
  if (metrics_ == nullptr) return;
  metrics_->SetSessionsInMemory(sessions_.size());
  metrics_->SetSessionsInStore(stored_sessions_);
  std::map<std::string_view, int64_t> cells = {
      {"full", 0}, {"window", 0}, {"streaming", 0}, {"sirllm", 0}, {"recompute", 0}};
  for (const auto& [id, entry] : sessions_) {
    cells[memory::PolicyKindName(entry.session->config().policy.kind)] +=
        entry.session->sequence().cache().size();
  }
  for (const auto& [policy, n] : cells) metrics_->SetCacheCells(policy, n);
  int64_t pinned = 0;
  for (const auto& [id, entry] : sessions_) pinned += entry.session->sequence().cache().pinned();
  metrics_->SetPinnedCells(pinned);
  metrics_->SetSessionMemoryBytes(memory_bytes_);
}

v1::SessionInfo SessionManager::InfoOf(const engine::Session& session) const {
  v1::SessionInfo info;
  info.set_session_id(session.id());
  SetConfigInfo(session.config(), &info);
  const memory::KvCache& cache = session.sequence().cache();
  info.set_cells_cached(cache.size());
  info.set_rounds(session.rounds());
  info.set_tokens_seen(cache.tokens_seen());
  info.set_created_unix_ms(absl::ToUnixMillis(session.created_at()));
  info.set_updated_unix_ms(absl::ToUnixMillis(session.updated_at()));
  SetPinsInfo(cache.State(), &info);
  return info;
}

absl::StatusOr<ChatTemplate> SessionManager::TemplateOf(const engine::Session& session) const {
  SINKSERVE_ASSIGN_OR_RETURN(ChatTemplateSelection selection,
                             SelectChatTemplate(session.config().chat_template, model_->chat_info));
  return selection.chat_template;
}

}  // namespace sinkserve::service
