#include "engine/session.h"

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "memory/kv_cache.h"
#include "memory/status_macros.h"

namespace sinkserve::engine {
namespace {

absl::string_view Sv(std::string_view s) { return {s.data(), s.size()}; }

// The engine's part of a snapshot, kept in SessionState::sampler_config (the
// store treats it as opaque bytes). Layout, little-endian:
//   "SSCF", u8 version (1 or 2),
//   sampler: f32 temperature, i32 top_k, f32 top_p, f32 min_p,
//            f32 repeat_penalty, f32 presence_penalty, f32 frequency_penalty,
//            i32 penalty_last_n, u64 seed,
//   i32 max_step_tokens, i32 capacity (as configured; 0 = automatic),
//   u32-length-prefixed chat_template, system_prompt,
//   u8 pin_system_prompt (version 2; version 1 sessions never pinned it).
// A new field means a new version; readers keep reading the old ones.
constexpr char kConfigMagic[4] = {'S', 'S', 'C', 'F'};
constexpr uint8_t kConfigVersion = 2;

void PutU32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}
void PutU64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}
void PutF32(std::string* out, float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  PutU32(out, u);
}
void PutBytes(std::string* out, std::string_view s) {
  PutU32(out, static_cast<uint32_t>(s.size()));
  out->append(s.data(), s.size());
}

// Reads the blob front to back; the first shortfall sticks.
class Reader {
 public:
  explicit Reader(std::string_view data) : data_(data) {}
  bool ok() const { return ok_; }
  bool done() const { return ok_ && pos_ == data_.size(); }
  const char* Take(size_t n) {
    if (!ok_ || n > data_.size() - pos_) {
      ok_ = false;
      return nullptr;
    }
    const char* p = data_.data() + pos_;
    pos_ += n;
    return p;
  }
  uint32_t U32() {
    const char* p = Take(4);
    uint32_t v = 0;
    for (int i = 0; p != nullptr && i < 4; ++i) {
      v |= uint32_t{static_cast<uint8_t>(p[i])} << (8 * i);
    }
    return v;
  }
  uint64_t U64() {
    const uint64_t lo = U32();
    return lo | (uint64_t{U32()} << 32);
  }
  float F32() {
    const uint32_t u = U32();
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  std::string Bytes() {
    const uint32_t n = U32();
    const char* p = Take(n);
    return p ? std::string(p, n) : std::string();
  }

 private:
  std::string_view data_;
  size_t pos_ = 0;
  bool ok_ = true;
};

std::string EncodeConfig(const SessionConfig& c) {
  std::string out(kConfigMagic, 4);
  out.push_back(static_cast<char>(kConfigVersion));
  const SamplerOptions& s = c.sampling;
  PutF32(&out, s.temperature);
  PutU32(&out, static_cast<uint32_t>(s.top_k));
  PutF32(&out, s.top_p);
  PutF32(&out, s.min_p);
  PutF32(&out, s.repeat_penalty);
  PutF32(&out, s.presence_penalty);
  PutF32(&out, s.frequency_penalty);
  PutU32(&out, static_cast<uint32_t>(s.penalty_last_n));
  PutU64(&out, s.seed);
  PutU32(&out, static_cast<uint32_t>(c.max_step_tokens));
  PutU32(&out, static_cast<uint32_t>(c.capacity));
  PutBytes(&out, c.chat_template);
  PutBytes(&out, c.system_prompt);
  out.push_back(c.pin_system_prompt ? 1 : 0);
  return out;
}

// `policy` comes from the state itself, not the blob.
absl::StatusOr<SessionConfig> DecodeConfig(std::string_view blob,
                                           const memory::PolicyConfig& policy) {
  Reader r(blob);
  const char* magic = r.Take(4);
  const char* version = r.Take(1);
  if (magic == nullptr || std::memcmp(magic, kConfigMagic, 4) != 0) {
    return absl::DataLossError("session config: not an engine session config (bad magic)");
  }
  const uint8_t v = version == nullptr ? 0 : static_cast<uint8_t>(*version);
  if (v < 1 || v > kConfigVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "session config has version ", v, "; this build reads versions 1 to ", kConfigVersion));
  }
  SessionConfig c;
  c.policy = policy;
  SamplerOptions& s = c.sampling;
  s.temperature = r.F32();
  s.top_k = static_cast<int32_t>(r.U32());
  s.top_p = r.F32();
  s.min_p = r.F32();
  s.repeat_penalty = r.F32();
  s.presence_penalty = r.F32();
  s.frequency_penalty = r.F32();
  s.penalty_last_n = static_cast<int32_t>(r.U32());
  s.seed = r.U64();
  c.max_step_tokens = static_cast<int32_t>(r.U32());
  c.capacity = static_cast<int32_t>(r.U32());
  c.chat_template = r.Bytes();
  c.system_prompt = r.Bytes();
  if (v >= 2) {
    const char* pin = r.Take(1);
    c.pin_system_prompt = pin != nullptr && *pin != 0;
  }
  if (!r.done()) {
    return absl::DataLossError(absl::StrCat("session config of ", blob.size(),
                                            " bytes is truncated or has trailing bytes"));
  }
  if (c.max_step_tokens < 1 || c.capacity < 0 || s.penalty_last_n < 0) {
    return absl::DataLossError(absl::StrCat(
        "session config: max_step_tokens ", c.max_step_tokens, ", capacity ", c.capacity,
        ", penalty_last_n ", s.penalty_last_n, " out of range"));
  }
  return c;
}

memory::KvShape ShapeOf(const Backend& backend, KvDtype dtype) {
  const ModelConfig& m = backend.config();
  memory::KvShape shape;
  shape.dtype = std::string(KvDtypeName(dtype));
  shape.dtype_bytes = static_cast<int32_t>(KvDtypeBytes(dtype));
  shape.n_layers = static_cast<int32_t>(m.n_layers);
  shape.kv_dim = static_cast<int32_t>(m.n_kv_heads * m.head_dim);
  return shape;
}

// Everything in a state but its K/V rows.
memory::SessionState MetadataOf(const Session& s, const Sampler& sampler) {
  const Sequence& seq = s.sequence();
  memory::SessionState st;
  st.id = s.id();
  st.model_fingerprint = s.model_fingerprint();
  st.policy = seq.cache().policy();
  st.capacity = seq.cache().capacity();
  st.cache = seq.cache().State();
  st.kv_shape = ShapeOf(*seq.backend(), seq.kv()->dtype());
  for (const PendingToken& p : seq.pending()) st.pending.push_back({p.token, p.score});
  st.rounds = s.rounds();
  st.turns = s.turns();
  st.history_length = s.history_length();
  st.last_turn = s.last_turn();
  st.sampler_config = EncodeConfig(s.config());
  st.rng_state = sampler.SaveState();
  st.created_at = s.created_at();
  st.updated_at = s.updated_at();
  return st;
}

absl::Status DataLoss(std::string_view id, const absl::Status& s) {
  if (s.code() == absl::StatusCode::kFailedPrecondition) return s;
  return absl::DataLossError(absl::StrCat("session ", Sv(id), ": ", s.message()));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Session>> Session::Create(std::string id, Backend* backend,
                                                         std::string model_fingerprint,
                                                         const SessionConfig& config) {
  SINKSERVE_RETURN_IF_ERROR(memory::ValidateSessionId(id));
  if (backend == nullptr) return absl::InvalidArgumentError("session needs a backend");
  if (model_fingerprint.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("session ", id, ": empty model fingerprint"));
  }
  if (config.capacity < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("session ", id, ": capacity ", config.capacity, " < 0"));
  }
  SequenceOptions options;
  options.policy = config.policy;
  options.max_step_tokens = config.max_step_tokens;
  options.capacity = config.capacity;
  SINKSERVE_ASSIGN_OR_RETURN(std::unique_ptr<Sequence> seq,
                             Sequence::Create(backend, options));
  auto session = std::unique_ptr<Session>(new Session());
  session->id_ = std::move(id);
  session->config_ = config;
  session->model_fingerprint_ = std::move(model_fingerprint);
  session->sequence_ = std::move(seq);
  session->sampler_ = std::make_unique<Sampler>(config.sampling);
  session->created_at_ = absl::Now();
  session->updated_at_ = session->created_at_;
  return session;
}

absl::StatusOr<SessionConfig> Session::ConfigOf(const memory::SessionState& state) {
  absl::StatusOr<SessionConfig> config = DecodeConfig(state.sampler_config, state.policy);
  if (!config.ok()) return DataLoss(state.id, config.status());
  return config;
}

absl::StatusOr<std::unique_ptr<Session>> Session::Restore(Backend* backend,
                                                          std::string model_fingerprint,
                                                          memory::SessionState state,
                                                          uint64_t version) {
  if (backend == nullptr) return absl::InvalidArgumentError("session needs a backend");
  const std::string id = state.id;
  if (state.model_fingerprint != model_fingerprint) {
    return absl::FailedPreconditionError(absl::StrCat(
        "session ", id, " was made with model ", state.model_fingerprint,
        ", not with the loaded model ", model_fingerprint));
  }
  if (absl::Status s = state.Validate(); !s.ok()) return DataLoss(id, s);
  const memory::KvShape want = ShapeOf(*backend, KvDtype::kF32);
  if (state.kv_shape.n_layers != want.n_layers || state.kv_shape.kv_dim != want.kv_dim) {
    return absl::FailedPreconditionError(absl::StrCat(
        "session ", id, " holds K/V rows of ", state.kv_shape.n_layers, " layers x ",
        state.kv_shape.kv_dim, ", the model has ", want.n_layers, " x ", want.kv_dim));
  }
  SINKSERVE_ASSIGN_OR_RETURN(SessionConfig config, ConfigOf(state));
  absl::StatusOr<memory::KvCache> cache =
      memory::KvCache::Restore(state.policy, state.capacity, state.cache);
  if (!cache.ok()) return DataLoss(id, cache.status());
  SINKSERVE_ASSIGN_OR_RETURN(std::unique_ptr<KvStorage> kv,
                             backend->NewKvStorage(state.capacity));
  if (KvDtypeName(kv->dtype()) != state.kv_shape.dtype) {
    return absl::FailedPreconditionError(absl::StrCat(
        "session ", id, " stores its K/V rows as ", state.kv_shape.dtype,
        ", the backend's cache holds ", Sv(KvDtypeName(kv->dtype())),
        "; restore it with the K/V dtype it was created with"));
  }
  if (absl::Status s = kv->ImportSlots(cache->context_slots(), state.kv); !s.ok()) {
    return DataLoss(id, s);
  }
  state.kv = std::string();
  std::vector<PendingToken> pending;
  for (const memory::PendingToken& p : state.pending) {
    if (p.token >= backend->config().vocab_size) {
      return absl::DataLossError(absl::StrCat("session ", id, ": pending token ", p.token,
                                              " outside the vocabulary of ",
                                              backend->config().vocab_size));
    }
    pending.push_back({p.token, p.score});
  }
  // As Sequence::Create: a `full` cache never steps past its capacity.
  int max_step = config.max_step_tokens;
  if (!state.policy.Budget().has_value()) max_step = std::min(max_step, state.capacity);
  absl::StatusOr<std::unique_ptr<Sequence>> seq = Sequence::FromParts(
      backend, *std::move(cache), std::move(kv), std::move(pending), max_step);
  if (!seq.ok()) return DataLoss(id, seq.status());
  auto sampler = std::make_unique<Sampler>(config.sampling);
  if (absl::Status s = sampler->RestoreState(state.rng_state); !s.ok()) {
    return DataLoss(id, s);
  }

  auto session = std::unique_ptr<Session>(new Session());
  session->id_ = id;
  session->config_ = std::move(config);
  session->model_fingerprint_ = std::move(model_fingerprint);
  session->sequence_ = *std::move(seq);
  session->sampler_ = std::move(sampler);
  session->rounds_ = state.rounds;
  session->turns_ = state.turns;
  session->history_length_ = state.history_length;
  session->last_turn_ = state.last_turn;  // a copy: checkpointed_ keeps it too
  session->created_at_ = state.created_at;
  session->updated_at_ = state.updated_at;
  session->dirty_ = false;
  session->version_ = version;
  session->checkpointed_ = std::move(state);
  return session;
}

absl::StatusOr<GenerationStats> Session::Turn(const Tokenizer& tokenizer,
                                              absl::Span<const int32_t> prompt,
                                              const GeneratorOptions& options,
                                              const GeneratorCallbacks& callbacks,
                                              const std::optional<SamplerOptions>& sampling) {
  absl::StatusOr<GenerationStats> stats;
  if (sampling.has_value()) {
    // Other settings for this turn, the same random stream and window.
    Sampler turn_sampler(*sampling);
    SINKSERVE_RETURN_IF_ERROR(turn_sampler.RestoreState(sampler_->SaveState()));
    stats = RunTurn(*sequence_, tokenizer, prompt, turn_sampler, options, callbacks);
    // Even a failed turn may have drawn numbers: keep the stream in step.
    absl::Status carried = sampler_->RestoreState(turn_sampler.SaveState());
    if (stats.ok() && !carried.ok()) stats = carried;
  } else {
    stats = RunTurn(*sequence_, tokenizer, prompt, *sampler_, options, callbacks);
  }
  if (!stats.ok()) {
    Touch();
    return stats.status();
  }
  FinishRound();
  return stats;
}

void Session::FinishRound() {
  sequence_->EndRound();
  ++rounds_;
  ++turns_;
  Touch();
}

void Session::Touch() {
  updated_at_ = std::max(updated_at_, absl::Now());
  dirty_ = true;
}

void Session::set_last_turn(memory::CompletedTurn turn) {
  last_turn_ = std::move(turn);
  Touch();
}

void Session::set_history_length(int64_t n) {
  history_length_ = n;
  Touch();
}

absl::StatusOr<memory::SessionState> Session::Snapshot() const {
  memory::SessionState state = MetadataOf(*this, *sampler_);
  SINKSERVE_RETURN_IF_ERROR(
      sequence_->kv()->ExportSlots(sequence_->cache().context_slots(), &state.kv));
  return state;
}

absl::StatusOr<memory::CheckpointResult> Session::Checkpoint(memory::SessionStore* store) {
  if (store == nullptr) return absl::InvalidArgumentError("checkpoint needs a store");
  if (!dirty_ && version_ != 0) {
    memory::CheckpointResult unchanged;
    unchanged.version = version_;
    return unchanged;
  }
  if (sequence_->cache().reserved()) {
    return absl::FailedPreconditionError(
        absl::StrCat("session ", id_, ": cannot checkpoint in the middle of a step"));
  }
  memory::SessionState next = MetadataOf(*this, *sampler_);
  // `recompute` rewrites kept cells' rows every step: DiffMetadata cannot see
  // that, so it always writes whole states.
  const bool incremental = checkpointed_.has_value() && version_ != 0 &&
                           next.policy.kind != memory::PolicyKind::kRecompute;
  absl::StatusOr<memory::CheckpointResult> result;
  if (incremental) {
    absl::StatusOr<memory::SessionDelta> delta = memory::DiffMetadata(*checkpointed_, next);
    if (delta.ok()) {
      SINKSERVE_RETURN_IF_ERROR(sequence_->kv()->ExportSlots(delta->KvSlots(), &delta->kv));
      result = store->Append(id_, version_, *delta);
    } else {
      result = delta.status();
    }
  }
  // No base to diff against, or it is gone from the store (deleted, or a
  // store that never saw it): write the whole state.
  if (!incremental || (!result.ok() && (result.status().code() == absl::StatusCode::kNotFound ||
                                        result.status().code() ==
                                            absl::StatusCode::kInvalidArgument))) {
    memory::SessionState full = next.Copy();
    SINKSERVE_RETURN_IF_ERROR(
        sequence_->kv()->ExportSlots(sequence_->cache().context_slots(), &full.kv));
    result = store->Put(full);
  }
  if (!result.ok()) return result.status();
  version_ = result->version;
  dirty_ = false;
  checkpointed_ = std::move(next);
  return result;
}

}  // namespace sinkserve::engine

namespace sinkserve::engine {

absl::StatusOr<memory::PendingCheckpoint> Session::Capture(bool full) {
  memory::PendingCheckpoint captured;
  captured.id = id_;
  captured.base_version = version_;
  if (!dirty_ && !full && checkpointed_.has_value()) return captured;  // a barrier
  if (sequence_->cache().reserved()) {
    return absl::FailedPreconditionError(
        absl::StrCat("session ", id_, ": cannot checkpoint in the middle of a step"));
  }
  memory::SessionState next = MetadataOf(*this, *sampler_);
  const bool incremental = !full && checkpointed_.has_value() &&
                           next.policy.kind != memory::PolicyKind::kRecompute;
  std::vector<int32_t> slots;
  if (incremental) {
    SINKSERVE_ASSIGN_OR_RETURN(memory::SessionDelta delta,
                               memory::DiffMetadata(*checkpointed_, next));
    slots = delta.KvSlots();
    captured.delta = std::move(delta);
  } else {
    captured.full = next.Copy();
    const absl::Span<const int32_t> context = sequence_->cache().context_slots();
    slots.assign(context.begin(), context.end());
  }
  if (!slots.empty()) {
    SINKSERVE_ASSIGN_OR_RETURN(captured.rows, sequence_->kv()->ExportSlotsAsync(slots));
  }
  captured.bytes = static_cast<int64_t>(slots.size()) * next.kv_shape.cell_bytes() +
                   static_cast<int64_t>(sizeof(memory::Cell)) *
                       static_cast<int64_t>(next.cache.cells.size());
  dirty_ = false;
  checkpointed_ = std::move(next);
  return captured;
}

}  // namespace sinkserve::engine
