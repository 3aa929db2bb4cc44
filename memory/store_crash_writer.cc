// Helper of store_crash_test: checkpoints simulated sessions in a loop, with
// fsync, and prints "done N" on stdout once every session has reached step N.
// The test SIGKILLs it at random moments and checks what survived. On start it
// resumes each session from whatever the store holds.
//
//   store_crash_writer --dir=D [--sessions=3] [--layers=4] [--kv_dim=64]
//                      [--inline_compaction] [--max_steps=N]
//                      [--pipeline --backlog=K] [--wal_max_kv_bytes=B]
//
// With --pipeline the checkpoints go through a CheckpointPipeline as in the
// server: each session runs up to K steps ahead of what is durable (a
// backlog of queued deltas at any moment), and "done N" means every
// session's step N was reported durable by the pipeline.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "memory/checkpoint_pipeline.h"
#include "memory/rocksdb_session_store.h"
#include "memory/session_state.h"
#include "memory/session_testing.h"

namespace sinkserve::memory {
namespace {

struct Session {
  std::string id;
  SessionState state;  // metadata of the last checkpoint; kv empty
  uint64_t version = 0;
};

[[noreturn]] void Die(const std::string& what, const absl::Status& status) {
  std::fprintf(stderr, "store_crash_writer: %s: %s\n", what.c_str(),
               status.ToString().c_str());
  std::exit(2);
}

void Report(int64_t step) {
  // One write(2) of a short line: a pipe delivers it whole or not at all.
  const std::string line = absl::StrCat("done ", step, "\n");
  if (::write(STDOUT_FILENO, line.data(), line.size()) !=
      static_cast<ssize_t>(line.size())) {
    std::exit(3);
  }
}

// The checkpoint for `step` of `s` (a full state every 7th step, as below).
PendingCheckpoint Capture(Session& s, const store_testing::SimOptions& sim, int64_t step) {
  SessionState next = store_testing::SimStepMetadata(s.state, sim, step);
  PendingCheckpoint cp;
  cp.id = s.id;
  cp.base_version = s.version;
  if (step % 7 == 0) {
    next.kv = store_testing::SimRows(next, next.cache.cells);
    cp.full = next.Copy();
    next.kv.clear();
  } else {
    absl::StatusOr<SessionDelta> delta = DiffMetadata(s.state, next);
    if (!delta.ok()) Die("diff " + s.id, delta.status());
    delta->kv = store_testing::SimRows(next, delta->added);
    cp.delta = *std::move(delta);
  }
  s.state = std::move(next);
  return cp;
}

int RunPipelined(SessionStore* store, const store_testing::SimOptions& sim,
                 std::vector<Session>* all, int64_t done, int64_t max_steps, int64_t backlog) {
  // Steps each session has had reported durable.
  std::vector<std::atomic<int64_t>> durable(all->size());
  for (size_t i = 0; i < all->size(); ++i) durable[i] = (*all)[i].state.turns;
  int64_t reported = done;
  auto min_durable = [&] {
    int64_t m = durable[0].load();
    for (const auto& d : durable) m = std::min(m, d.load());
    return m;
  };
  auto report = [&] {
    const int64_t m = min_durable();
    if (m > reported) {
      reported = m;
      Report(m);
    }
  };
  CheckpointPipelineOptions options;
  options.writer_threads = 2;
  CheckpointPipeline pipeline(store, options);
  for (int64_t step = done + 1; step <= max_steps; ++step) {
    // The decoder never waits for a write, only for the backlog bound.
    while (step - min_durable() > backlog) {
      report();
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    for (size_t i = 0; i < all->size(); ++i) {
      Session& s = (*all)[i];
      if (s.state.turns >= step) continue;
      pipeline.Submit(Capture(s, sim, step),
                      [&durable, i, step, id = s.id](const absl::StatusOr<CheckpointOutcome>& o) {
                        if (!o.ok()) Die(absl::StrCat("checkpoint ", step, " of ", id), o.status());
                        durable[i] = step;
                      });
    }
    report();
  }
  pipeline.FlushAll();
  report();
  return 0;
}

int Run(int argc, char** argv) {
  std::string dir;
  int sessions = 3;
  int64_t max_steps = 1000000;
  bool inline_compaction = false;
  bool pipeline = false;
  int64_t backlog = 4;
  uint64_t wal_max_kv_bytes = RocksDbSessionStoreOptions().wal_max_kv_bytes;
  store_testing::SimOptions sim;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](const char* name) -> const char* {
      const std::string prefix = absl::StrCat("--", name, "=");
      return arg.rfind(prefix, 0) == 0 ? argv[i] + prefix.size() : nullptr;
    };
    if (const char* v = value("dir")) {
      dir = v;
    } else if (const char* v = value("sessions")) {
      sessions = std::atoi(v);
    } else if (const char* v = value("layers")) {
      sim.n_layers = std::atoi(v);
    } else if (const char* v = value("kv_dim")) {
      sim.kv_dim = std::atoi(v);
    } else if (const char* v = value("max_steps")) {
      max_steps = std::atoll(v);
    } else if (arg == "--inline_compaction") {
      inline_compaction = true;
    } else if (arg == "--pipeline") {
      pipeline = true;
    } else if (const char* v = value("backlog")) {
      backlog = std::atoll(v);
    } else if (const char* v = value("wal_max_kv_bytes")) {
      wal_max_kv_bytes = std::strtoull(v, nullptr, 10);
    } else {
      std::fprintf(stderr, "store_crash_writer: unknown flag %s\n", argv[i]);
      return 1;
    }
  }
  if (dir.empty()) {
    std::fprintf(stderr, "store_crash_writer: --dir is required\n");
    return 1;
  }

  RocksDbSessionStoreOptions options;
  // As in the server: through the pipeline, the store does not sync each
  // write; the pipeline syncs each group.
  options.sync = !pipeline;
  options.wal_max_kv_bytes = wal_max_kv_bytes;
  options.compact_after_deltas = 3;
  options.background_compaction = !inline_compaction;
  options.kv_chunk_bytes = 16 << 10;  // full records span several chunks
  absl::StatusOr<std::unique_ptr<RocksDbSessionStore>> store =
      RocksDbSessionStore::Open(dir, options);
  if (!store.ok()) Die("open", store.status());

  std::vector<Session> all(sessions);
  for (int i = 0; i < sessions; ++i) {
    Session& s = all[i];
    s.id = absl::StrCat("crash-", i);
    absl::StatusOr<LoadedSession> loaded =
        (*store)->Load(s.id, sim.fingerprint);
    if (loaded.ok()) {
      s.state = std::move(loaded->state);
      s.state.kv.clear();
      s.version = loaded->version;
      continue;
    }
    if (!absl::IsNotFound(loaded.status()))
      Die("load " + s.id, loaded.status());
    SessionState first = store_testing::SimStateAt(s.id, sim, 0);
    absl::StatusOr<CheckpointResult> r = (*store)->Put(first);
    if (!r.ok()) Die("put " + s.id, r.status());
    s.version = r->version;
    s.state = std::move(first);
    s.state.kv.clear();
  }
  // Step 0 is reported done below: durable first (a store without per-write
  // sync, as in pipeline mode, makes it so only on Sync).
  if (absl::Status synced = (*store)->Sync(); !synced.ok()) Die("sync", synced);
  int64_t done = all[0].state.turns;
  for (const Session& s : all) done = std::min(done, s.state.turns);
  Report(done);
  if (pipeline) return RunPipelined(store->get(), sim, &all, done, max_steps, backlog);

  for (int64_t step = done + 1; step <= max_steps; ++step) {
    for (Session& s : all) {
      if (s.state.turns >= step) continue;
      SessionState next = store_testing::SimStepMetadata(s.state, sim, step);
      absl::StatusOr<CheckpointResult> r;
      if (step % 7 == 0) {
        next.kv = store_testing::SimRows(next, next.cache.cells);
        r = (*store)->Put(next);
        next.kv.clear();
      } else {
        absl::StatusOr<SessionDelta> delta = DiffMetadata(s.state, next);
        if (!delta.ok()) Die("diff " + s.id, delta.status());
        delta->kv = store_testing::SimRows(next, delta->added);
        r = (*store)->Append(s.id, s.version, *delta);
      }
      if (!r.ok())
        Die(absl::StrCat("checkpoint ", step, " of ", s.id), r.status());
      s.version = r->version;
      s.state = std::move(next);
    }
    Report(step);
  }
  return 0;
}

}  // namespace
}  // namespace sinkserve::memory

int main(int argc, char** argv) { return sinkserve::memory::Run(argc, argv); }
