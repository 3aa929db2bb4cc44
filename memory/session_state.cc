#include "memory/session_state.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "memory/status_macros.h"

namespace sinkserve::memory {
namespace {

// Keeps every byte count below 2^63 with room to spare, and catches garbage
// shapes before anything is allocated for them.
// With at most 2^28 cells, a state's K/V bytes stay below 2^60.
constexpr int32_t kMaxLayers = 1 << 10;
constexpr int32_t kMaxKvDim = 1 << 16;
constexpr int32_t kMaxDtypeBytes = 16;
constexpr int32_t kMaxCapacity = 1 << 28;

absl::string_view Sv(std::string_view s) { return {s.data(), s.size()}; }

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

bool SameCell(const Cell& a, const Cell& b) {
  return a.token == b.token && Bits(a.score) == Bits(b.score) &&
         a.arrival == b.arrival && a.slot == b.slot;
}

bool SameCells(const std::vector<Cell>& a, const std::vector<Cell>& b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), SameCell);
}

bool SamePending(const std::vector<PendingToken>& a,
                 const std::vector<PendingToken>& b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(),
                    [](const PendingToken& x, const PendingToken& y) {
                      return x.token == y.token &&
                             Bits(x.score) == Bits(y.score);
                    });
}

absl::Status ValidatePending(std::string_view id,
                             const std::vector<PendingToken>& pending) {
  if (pending.size() > kMaxPendingTokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("session ", Sv(id), ": ", pending.size(),
                     " pending tokens exceed ", kMaxPendingTokens));
  }
  for (size_t i = 0; i < pending.size(); ++i) {
    if (pending[i].token < 0 || std::isnan(pending[i].score)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "session ", Sv(id), ": pending token ", i, " has id ",
          pending[i].token, " and score ", pending[i].score,
          "; need an id >= 0 and a score that is not NaN"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateLastTurn(std::string_view id, const CompletedTurn& t) {
  if (t.turn_id.size() > kMaxCompletedTurnBytes ||
      t.text.size() > kMaxCompletedTurnBytes ||
      t.token_ids.size() > kMaxCompletedTurnBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "session ", Sv(id), ": last turn over ", kMaxCompletedTurnBytes,
        " bytes or tokens"));
  }
  if (!t.logprobs.empty() && t.logprobs.size() != t.token_ids.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "session ", Sv(id), ": last turn has ", t.logprobs.size(),
        " log-probabilities for ", t.token_ids.size(), " tokens"));
  }
  if (t.turn_id.empty() && (!t.text.empty() || !t.token_ids.empty())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "session ", Sv(id), ": last turn has output but no turn id"));
  }
  return absl::OkStatus();
}

// Cells must form a state KvCache::Restore accepts.
absl::Status ValidateCells(const SessionState& s) {
  const std::vector<Cell>& cells = s.cache.cells;
  if (static_cast<int64_t>(cells.size()) > s.capacity) {
    return absl::InvalidArgumentError(
        absl::StrCat("session ", Sv(s.id), ": ", cells.size(),
                     " cells exceed the capacity of ", s.capacity, " slots"));
  }
  if (s.cache.tokens_seen < 0 || s.cache.evicted_total < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "session ", Sv(s.id), ": negative tokens_seen ", s.cache.tokens_seen,
        " or evicted_total ", s.cache.evicted_total));
  }
  std::vector<bool> used(s.capacity, false);
  for (size_t i = 0; i < cells.size(); ++i) {
    const Cell& c = cells[i];
    if (c.arrival < 0 || c.arrival >= s.cache.tokens_seen ||
        (i > 0 && c.arrival <= cells[i - 1].arrival)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "session ", Sv(s.id), ": cell ", i, " has arrival ", c.arrival,
          "; arrivals must increase strictly and stay below tokens_seen ",
          s.cache.tokens_seen));
    }
    if (c.slot < 0 || c.slot >= s.capacity || used[c.slot]) {
      return absl::InvalidArgumentError(
          absl::StrCat("session ", Sv(s.id), ": cell ", i, " (arrival ",
                       c.arrival, ") has slot ", c.slot,
                       ", repeated or outside [0, ", s.capacity, ")"));
    }
    used[c.slot] = true;
    if (std::isnan(c.score)) {
      return absl::InvalidArgumentError(
          absl::StrCat("session ", Sv(s.id), ": cell ", i, " (arrival ",
                       c.arrival, ") has a NaN score"));
    }
  }
  if (absl::Status pins = ValidatePins(s.cache); !pins.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("session ", Sv(s.id), ": ", pins.message()));
  }
  return absl::OkStatus();
}

// Strictly ascending arrivals: `what` names the list in the error.
template <typename T, typename ArrivalOf>
absl::Status CheckAscending(const std::vector<T>& v, ArrivalOf arrival_of,
                            std::string_view what) {
  for (size_t i = 1; i < v.size(); ++i) {
    if (arrival_of(v[i]) <= arrival_of(v[i - 1])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "delta: ", Sv(what), " arrivals not strictly ascending (",
          arrival_of(v[i - 1]), " then ", arrival_of(v[i]), ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckSameSession(const SessionState& prev,
                              const SessionState& next) {
  if (prev.id != next.id || prev.model_fingerprint != next.model_fingerprint ||
      prev.policy != next.policy || prev.capacity != next.capacity ||
      prev.kv_shape != next.kv_shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        "delta from session ", Sv(prev.id), " to ", Sv(next.id),
        ": id, model fingerprint, policy, capacity and K/V shape must stay the "
        "same; write a full snapshot instead"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateTenantName(std::string_view tenant) {
  if (tenant.empty() || tenant.size() > kMaxTenantBytes) {
    return absl::InvalidArgumentError(absl::StrCat("tenant name must have 1 to ", kMaxTenantBytes,
                                                   " bytes, got ", tenant.size()));
  }
  for (char c : tenant) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-')) {
      return absl::InvalidArgumentError(
          "tenant name may only hold lower-case letters, digits, '_' and '-'");
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateSessionId(std::string_view id) {
  if (const size_t sep = id.find(kTenantSeparator); sep != std::string_view::npos) {
    SINKSERVE_RETURN_IF_ERROR(ValidateTenantName(id.substr(0, sep)));
    id.remove_prefix(sep + 1);
  }
  if (id.empty() || id.size() > kMaxSessionIdBytes) {
    return absl::InvalidArgumentError(absl::StrCat("session id must have 1 to ",
                                                   kMaxSessionIdBytes,
                                                   " bytes, got ", id.size()));
  }
  for (char ch : id) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c < 0x21 || c > 0x7E) {
      return absl::InvalidArgumentError(absl::StrCat(
          "session id may only hold printable ASCII without spaces, got byte ",
          static_cast<int>(c)));
    }
  }
  return absl::OkStatus();
}

absl::Status KvShape::Validate() const {
  if (dtype.empty() || dtype.size() > 32 || dtype_bytes <= 0 ||
      dtype_bytes > kMaxDtypeBytes || n_layers <= 0 || n_layers > kMaxLayers ||
      kv_dim <= 0 || kv_dim > kMaxKvDim) {
    return absl::InvalidArgumentError(
        absl::StrCat("K/V shape dtype '", dtype, "' (", dtype_bytes,
                     " bytes) x ", n_layers, " layers x kv_dim ", kv_dim,
                     ": need a dtype name of 1 to 32 bytes, 1 to ",
                     kMaxDtypeBytes, " bytes per element, 1 to ", kMaxLayers,
                     " layers and kv_dim 1 to ", kMaxKvDim));
  }
  return absl::OkStatus();
}

absl::Status SessionState::Validate() const {
  SINKSERVE_RETURN_IF_ERROR(ValidateMetadata());
  const int64_t want =
      static_cast<int64_t>(cache.cells.size()) * kv_shape.cell_bytes();
  if (static_cast<int64_t>(kv.size()) != want) {
    return absl::InvalidArgumentError(
        absl::StrCat("session ", Sv(id), ": kv holds ", kv.size(), " bytes, ",
                     cache.cells.size(), " cells of ", kv_shape.cell_bytes(),
                     " need ", want));
  }
  return absl::OkStatus();
}

absl::Status SessionState::ValidateMetadata() const {
  SINKSERVE_RETURN_IF_ERROR(ValidateSessionId(id));
  if (model_fingerprint.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("session ", Sv(id), ": empty model fingerprint"));
  }
  SINKSERVE_RETURN_IF_ERROR(policy.Validate());
  SINKSERVE_RETURN_IF_ERROR(kv_shape.Validate());
  if (capacity < 1 || capacity > kMaxCapacity) {
    return absl::InvalidArgumentError(
        absl::StrCat("session ", Sv(id), ": capacity ", capacity,
                     " not in [1, ", kMaxCapacity, "]"));
  }
  SINKSERVE_RETURN_IF_ERROR(ValidatePending(id, pending));
  SINKSERVE_RETURN_IF_ERROR(ValidateLastTurn(id, last_turn));
  return ValidateCells(*this);
}

bool operator==(const SessionState& a, const SessionState& b) {
  return a.id == b.id && a.model_fingerprint == b.model_fingerprint &&
         a.policy.kind == b.policy.kind && a.policy.sinks == b.policy.sinks &&
         a.policy.window == b.policy.window &&
         a.policy.entropy == b.policy.entropy &&
         Bits(a.policy.decay) == Bits(b.policy.decay) &&
         a.policy.max_pinned == b.policy.max_pinned &&
         a.capacity == b.capacity && SameCells(a.cache.cells, b.cache.cells) &&
         a.cache.pins == b.cache.pins &&
         a.cache.tokens_seen == b.cache.tokens_seen &&
         a.cache.evicted_total == b.cache.evicted_total &&
         a.kv_shape == b.kv_shape && a.kv == b.kv &&
         SamePending(a.pending, b.pending) && a.rounds == b.rounds &&
         a.turns == b.turns && a.history_length == b.history_length &&
         a.last_turn == b.last_turn &&
         a.sampler_config == b.sampler_config && a.rng_state == b.rng_state &&
         a.created_at == b.created_at && a.updated_at == b.updated_at;
}

bool operator==(const CompletedTurn& a, const CompletedTurn& b) {
  return a.turn_id == b.turn_id && a.text == b.text &&
         a.token_ids == b.token_ids &&
         std::equal(a.logprobs.begin(), a.logprobs.end(), b.logprobs.begin(),
                    b.logprobs.end(),
                    [](float x, float y) { return Bits(x) == Bits(y); }) &&
         a.stop_reason == b.stop_reason &&
         a.prompt_tokens == b.prompt_tokens &&
         a.generated_tokens == b.generated_tokens &&
         a.cells_kept == b.cells_kept && a.cells_evicted == b.cells_evicted;
}

std::vector<int32_t> SessionDelta::KvSlots() const {
  std::vector<int32_t> slots;
  slots.reserve(rewritten.size() + added.size());
  for (const Cell& c : rewritten) slots.push_back(c.slot);
  for (const Cell& c : added) slots.push_back(c.slot);
  return slots;
}

bool operator==(const SessionDelta& a, const SessionDelta& b) {
  return a.evicted == b.evicted && SameCells(a.updated, b.updated) &&
         SameCells(a.rewritten, b.rewritten) && SameCells(a.added, b.added) &&
         a.kv == b.kv && a.tokens_seen == b.tokens_seen &&
         a.evicted_total == b.evicted_total && a.rounds == b.rounds &&
         a.turns == b.turns && a.history_length == b.history_length &&
         a.updated_at == b.updated_at && a.sampler_config == b.sampler_config &&
         a.rng_state == b.rng_state &&
         a.pending.has_value() == b.pending.has_value() &&
         (!a.pending || SamePending(*a.pending, *b.pending)) &&
         a.last_turn == b.last_turn && a.pins == b.pins;
}

absl::StatusOr<SessionDelta> DiffMetadata(const SessionState& prev,
                                          const SessionState& next) {
  SINKSERVE_RETURN_IF_ERROR(CheckSameSession(prev, next));
  const std::vector<Cell>& a = prev.cache.cells;
  const std::vector<Cell>& b = next.cache.cells;
  SessionDelta delta;
  // Both lists ascend by arrival: one merge finds evictions and updates.
  size_t i = 0, j = 0;
  while (i < a.size() || j < b.size()) {
    if (j == b.size() || (i < a.size() && a[i].arrival < b[j].arrival)) {
      delta.evicted.push_back(a[i++].arrival);
    } else if (i == a.size() || b[j].arrival < a[i].arrival) {
      if (b[j].arrival < prev.cache.tokens_seen) {
        return absl::InvalidArgumentError(absl::StrCat(
            "delta for session ", Sv(next.id), ": cell with arrival ",
            b[j].arrival, " is new but arrived before the previous state's ",
            "tokens_seen ", prev.cache.tokens_seen));
      }
      delta.added.push_back(b[j++]);
    } else {
      if (a[i].token != b[j].token) {
        return absl::InvalidArgumentError(absl::StrCat(
            "delta for session ", Sv(next.id), ": arrival ", a[i].arrival,
            " changed token from ", a[i].token, " to ", b[j].token));
      }
      if (!SameCell(a[i], b[j])) delta.updated.push_back(b[j]);
      ++i;
      ++j;
    }
  }
  delta.tokens_seen = next.cache.tokens_seen;
  delta.evicted_total = next.cache.evicted_total;
  delta.rounds = next.rounds;
  delta.turns = next.turns;
  delta.history_length = next.history_length;
  delta.updated_at = next.updated_at;
  if (next.sampler_config != prev.sampler_config) {
    delta.sampler_config = next.sampler_config;
  }
  if (next.rng_state != prev.rng_state) delta.rng_state = next.rng_state;
  if (!SamePending(next.pending, prev.pending)) delta.pending = next.pending;
  if (next.last_turn != prev.last_turn) delta.last_turn = next.last_turn;
  if (next.cache.pins != prev.cache.pins) delta.pins = next.cache.pins;
  return delta;
}

absl::StatusOr<SessionDelta> Diff(const SessionState& prev,
                                  const SessionState& next) {
  SINKSERVE_RETURN_IF_ERROR(prev.Validate());
  SINKSERVE_RETURN_IF_ERROR(next.Validate());
  SINKSERVE_ASSIGN_OR_RETURN(SessionDelta delta, DiffMetadata(prev, next));
  const KvShape& shape = next.kv_shape;
  const int64_t row = shape.row_bytes();
  const int64_t na = static_cast<int64_t>(prev.cache.cells.size());
  const int64_t nb = static_cast<int64_t>(next.cache.cells.size());
  // Row r of (layer, kv) block `block` of a state with n cells.
  auto row_of = [row](const std::string& kv, int64_t n, int64_t block,
                      int64_t r) {
    return std::string_view(kv).substr((block * n + r) * row, row);
  };
  const int64_t blocks = int64_t{shape.n_layers} * 2;

  // Logical indices (in next) of kept cells whose rows differ, then of added.
  std::vector<int64_t> kv_rows;
  std::vector<Cell> updated;
  {
    size_t i = 0;
    for (int64_t j = 0; j < nb; ++j) {
      const Cell& c = next.cache.cells[j];
      while (i < prev.cache.cells.size() &&
             prev.cache.cells[i].arrival < c.arrival) {
        ++i;
      }
      if (i == prev.cache.cells.size() ||
          prev.cache.cells[i].arrival != c.arrival) {
        continue;  // added
      }
      bool same = true;
      for (int64_t block = 0; block < blocks && same; ++block) {
        same = row_of(prev.kv, na, block, static_cast<int64_t>(i)) ==
               row_of(next.kv, nb, block, j);
      }
      if (!same) {
        delta.rewritten.push_back(c);
        kv_rows.push_back(j);
      }
    }
  }
  // A rewritten cell is listed there only, not also in `updated`.
  for (const Cell& c : delta.updated) {
    const bool rewritten = std::binary_search(
        delta.rewritten.begin(), delta.rewritten.end(), c,
        [](const Cell& x, const Cell& y) { return x.arrival < y.arrival; });
    if (!rewritten) updated.push_back(c);
  }
  delta.updated = std::move(updated);
  for (int64_t j = nb - static_cast<int64_t>(delta.added.size()); j < nb; ++j) {
    kv_rows.push_back(j);
  }
  const int64_t m = static_cast<int64_t>(kv_rows.size());
  delta.kv.resize(static_cast<size_t>(blocks * m * row));
  for (int64_t block = 0; block < blocks; ++block) {
    for (int64_t k = 0; k < m; ++k) {
      std::memcpy(&delta.kv[(block * m + k) * row],
                  row_of(next.kv, nb, block, kv_rows[k]).data(), row);
    }
  }
  return delta;
}

absl::Status ApplyDelta(const SessionDelta& delta, SessionState* state) {
  SINKSERVE_RETURN_IF_ERROR(state->Validate());
  StateReplayer replayer(std::move(*state), /*with_kv=*/true);
  absl::Status status = replayer.Apply(delta, delta.kv);
  *state = std::move(replayer).Finish();
  return status;
}

StateReplayer::StateReplayer(SessionState base, bool with_kv)
    : with_kv_(with_kv), state_(std::move(base)) {
  const int32_t n = static_cast<int32_t>(state_.cache.cells.size());
  sources_.reserve(n);
  for (int32_t i = 0; i < n; ++i) sources_.push_back({0, i});
  buffers_.push_back(with_kv_ ? std::move(state_.kv) : std::string());
  buffer_rows_.push_back(n);
  state_.kv.clear();
}

absl::Status StateReplayer::Apply(const SessionDelta& delta, std::string kv) {
  auto arrival_of_cell = [](const Cell& c) { return c.arrival; };
  SINKSERVE_RETURN_IF_ERROR(CheckAscending(
      delta.evicted, [](int64_t a) { return a; }, "evicted"));
  SINKSERVE_RETURN_IF_ERROR(
      CheckAscending(delta.updated, arrival_of_cell, "updated"));
  SINKSERVE_RETURN_IF_ERROR(
      CheckAscending(delta.rewritten, arrival_of_cell, "rewritten"));
  SINKSERVE_RETURN_IF_ERROR(
      CheckAscending(delta.added, arrival_of_cell, "added"));
  const int64_t kv_rows = delta.kv_cells();
  if (with_kv_ && static_cast<int64_t>(kv.size()) !=
                      kv_rows * state_.kv_shape.cell_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "delta for session ", Sv(state_.id), ": kv holds ", kv.size(),
        " bytes, ", kv_rows, " rewritten + added cells need ",
        kv_rows * state_.kv_shape.cell_bytes()));
  }

  // Build the new cell list aside so that a bad delta leaves us unchanged.
  const std::vector<Cell>& old = state_.cache.cells;
  std::vector<Cell> cells;
  std::vector<Source> sources;
  cells.reserve(old.size() + delta.added.size());
  sources.reserve(old.size() + delta.added.size());
  const int32_t buffer = static_cast<int32_t>(buffers_.size());
  size_t e = 0, u = 0, r = 0;
  for (size_t i = 0; i < old.size(); ++i) {
    const int64_t arrival = old[i].arrival;
    if (e < delta.evicted.size() && delta.evicted[e] == arrival) {
      ++e;
      continue;
    }
    Cell cell = old[i];
    Source source = sources_[i];
    const Cell* change = nullptr;
    if (u < delta.updated.size() && delta.updated[u].arrival == arrival) {
      change = &delta.updated[u++];
    }
    if (r < delta.rewritten.size() && delta.rewritten[r].arrival == arrival) {
      if (change != nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat("delta for session ", Sv(state_.id), ": arrival ",
                         arrival, " is both updated and rewritten"));
      }
      change = &delta.rewritten[r];
      source = {buffer, static_cast<int32_t>(r++)};
    }
    if (change != nullptr) {
      if (change->token != cell.token) {
        return absl::InvalidArgumentError(absl::StrCat(
            "delta for session ", Sv(state_.id), ": arrival ", arrival,
            " has token ", cell.token, ", the delta says ", change->token));
      }
      cell = *change;
    }
    // Anything left in the lists below this arrival names a missing cell.
    if ((e < delta.evicted.size() && delta.evicted[e] < arrival) ||
        (u < delta.updated.size() && delta.updated[u].arrival < arrival) ||
        (r < delta.rewritten.size() && delta.rewritten[r].arrival < arrival)) {
      break;
    }
    cells.push_back(cell);
    sources.push_back(source);
  }
  if (e != delta.evicted.size() || u != delta.updated.size() ||
      r != delta.rewritten.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "delta for session ", Sv(state_.id),
        " evicts, updates or rewrites a cell the state does not hold (",
        delta.evicted.size() - e, " evicted, ", delta.updated.size() - u,
        " updated, ", delta.rewritten.size() - r, " rewritten unmatched)"));
  }
  if (!delta.added.empty() &&
      delta.added.front().arrival < state_.cache.tokens_seen) {
    return absl::InvalidArgumentError(
        absl::StrCat("delta for session ", Sv(state_.id), ": added arrival ",
                     delta.added.front().arrival, " is before tokens_seen ",
                     state_.cache.tokens_seen));
  }
  for (size_t i = 0; i < delta.added.size(); ++i) {
    cells.push_back(delta.added[i]);
    sources.push_back(
        {buffer, static_cast<int32_t>(delta.rewritten.size() + i)});
  }
  if (delta.tokens_seen < state_.cache.tokens_seen ||
      delta.evicted_total < state_.cache.evicted_total) {
    return absl::InvalidArgumentError(
        absl::StrCat("delta for session ", Sv(state_.id), ": tokens_seen ",
                     state_.cache.tokens_seen, " -> ", delta.tokens_seen,
                     " or evicted_total ", state_.cache.evicted_total, " -> ",
                     delta.evicted_total, " goes backwards"));
  }

  SessionState next;
  next.id = state_.id;
  next.capacity = state_.capacity;
  next.cache.cells = std::move(cells);
  next.cache.tokens_seen = delta.tokens_seen;
  next.cache.evicted_total = delta.evicted_total;
  next.cache.pins = delta.pins ? *delta.pins : state_.cache.pins;
  MarkPinned(&next.cache);
  SINKSERVE_RETURN_IF_ERROR(ValidateCells(next));
  if (delta.pending) {
    SINKSERVE_RETURN_IF_ERROR(ValidatePending(state_.id, *delta.pending));
  }
  if (delta.last_turn) {
    SINKSERVE_RETURN_IF_ERROR(ValidateLastTurn(state_.id, *delta.last_turn));
  }

  state_.cache = std::move(next.cache);
  sources_ = std::move(sources);
  state_.rounds = delta.rounds;
  state_.turns = delta.turns;
  state_.history_length = delta.history_length;
  state_.updated_at = delta.updated_at;
  if (delta.sampler_config) state_.sampler_config = *delta.sampler_config;
  if (delta.rng_state) state_.rng_state = *delta.rng_state;
  if (delta.pending) state_.pending = *delta.pending;
  if (delta.last_turn) state_.last_turn = *delta.last_turn;
  buffers_.push_back(with_kv_ ? std::move(kv) : std::string());
  buffer_rows_.push_back(kv_rows);
  return absl::OkStatus();
}

SessionState StateReplayer::Finish() && {
  SessionState out = std::move(state_);
  if (!with_kv_) return out;
  const int64_t n = static_cast<int64_t>(sources_.size());
  // Untouched base (no deltas, or none that moved anything): hand it over.
  bool identity = buffer_rows_[0] == n;
  for (int64_t i = 0; i < n && identity; ++i) {
    identity = sources_[i].buffer == 0 && sources_[i].row == i;
  }
  if (identity) {
    out.kv = std::move(buffers_[0]);
    return out;
  }
  const int64_t row = out.kv_shape.row_bytes();
  const int64_t blocks = int64_t{out.kv_shape.n_layers} * 2;
  // reserve + append: resize would first zero every byte we overwrite.
  out.kv.reserve(static_cast<size_t>(blocks * n * row));
  for (int64_t block = 0; block < blocks; ++block) {
    // Copy runs of cells whose rows are adjacent in the same buffer at once.
    for (int64_t i = 0; i < n;) {
      const Source s = sources_[i];
      int64_t len = 1;
      while (i + len < n && sources_[i + len].buffer == s.buffer &&
             sources_[i + len].row == s.row + len) {
        ++len;
      }
      const char* src = buffers_[s.buffer].data() +
                        (block * buffer_rows_[s.buffer] + s.row) * row;
      out.kv.append(src, static_cast<size_t>(len * row));
      i += len;
    }
  }
  return out;
}

SessionInfo SessionInfo::Of(const SessionState& state) {
  SessionInfo info;
  info.id = state.id;
  info.model_fingerprint = state.model_fingerprint;
  info.policy = state.policy.ToString();
  info.capacity = state.capacity;
  info.kv_shape = state.kv_shape;
  info.cells = static_cast<int64_t>(state.cache.cells.size());
  info.tokens_seen = state.cache.tokens_seen;
  info.rounds = state.rounds;
  info.turns = state.turns;
  info.history_length = state.history_length;
  info.created_at = state.created_at;
  info.updated_at = state.updated_at;
  return info;
}

}  // namespace sinkserve::memory
