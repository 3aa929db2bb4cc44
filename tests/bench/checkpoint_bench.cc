// The store side of `bench load`: N sessions whose turns end back to back,
// each checkpointing a delta of a model-shaped cache through the server's own
// path (Session::Capture's product into memory::CheckpointPipeline over a
// RocksDbSessionStore with sync), with the disk's raw sequential write speed
// measured in the same run (O_DIRECT writes + fdatasync, what `dd
// oflag=direct conv=fdatasync` does).
//
//   checkpoint_bench [--sessions=16] [--turns=8] [--layers=32] [--kv_dim=4096]
//                    [--dtype_bytes=2] [--turn_tokens=70] [--window=252]
//                    [--threads=2] [--buffer_mb=1024] [--sync=1]
//                    [--raw_mb=1024] [--dir=/tmp/checkpoint_bench]
//
// Defaults are a Llama-2-7B-shaped f16 cache (0.5 MB per cell) under
// streaming(4,252) with 64-token replies (~35 MB per turn). Reports the
// sustained store rate against the raw rate, each turn's time from capture
// to durable (p50/p99) and what the decoding thread paid per turn end (the
// Submit call: p50/p99/max), which must stay in microseconds.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "memory/checkpoint_pipeline.h"
#include "memory/rocksdb_session_store.h"
#include "memory/session_state.h"
#include "memory/session_testing.h"

namespace sinkserve::memory {
namespace {

namespace fs = std::filesystem;

struct Flags {
  int sessions = 16;
  int turns = 8;
  int layers = 32;
  int kv_dim = 4096;
  int dtype_bytes = 2;
  int turn_tokens = 70;
  int window = 252;
  int threads = 2;
  int buffer_mb = 1024;
  bool sync = true;
  int raw_mb = 1024;
  int wal_max_kb = 1024;  // -1: every checkpoint through the WAL
  std::string dir = "/tmp/checkpoint_bench";
};

bool ParseFlags(int argc, char** argv, Flags* f) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) != 0 || eq == std::string::npos) return false;
    const std::string name = arg.substr(2, eq - 2);
    const std::string value = arg.substr(eq + 1);
    const int n = std::atoi(value.c_str());
    int* ints[] = {&f->sessions,    &f->turns,  &f->layers,  &f->kv_dim,    &f->dtype_bytes,
                   &f->turn_tokens, &f->window, &f->threads, &f->buffer_mb, &f->raw_mb, &f->wal_max_kb};
    const char* names[] = {"sessions",    "turns",  "layers",  "kv_dim",    "dtype_bytes",
                           "turn_tokens", "window", "threads", "buffer_mb", "raw_mb", "wal_max_kb"};
    bool found = false;
    for (size_t k = 0; k < std::size(names); ++k) {
      if (name == names[k]) {
        *ints[k] = n;
        found = true;
      }
    }
    if (found) continue;
    if (name == "sync") {
      f->sync = n != 0;
    } else if (name == "dir") {
      f->dir = value;
    } else {
      return false;
    }
  }
  return f->sessions > 0 && f->turns > 0 && f->threads > 0 && f->turn_tokens > 0;
}

// Sequential O_DIRECT writes of `mb` MiB in 4 MiB blocks, then fdatasync:
// the disk's raw rate in MB/s (1e6 bytes), or -1.
double RawWriteMBps(const std::string& dir, int mb) {
  const std::string path = dir + "/raw_write_probe";
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_DIRECT, 0644);
  if (fd < 0) return -1;
  constexpr size_t kBlock = size_t{4} << 20;
  void* buf = nullptr;
  if (::posix_memalign(&buf, 4096, kBlock) != 0) {
    ::close(fd);
    return -1;
  }
  std::mt19937_64 rng(7);
  for (size_t i = 0; i < kBlock / 8; ++i) static_cast<uint64_t*>(buf)[i] = rng();
  const absl::Time start = absl::Now();
  bool ok = true;
  for (int64_t written = 0; written < int64_t{mb} << 20 && ok; written += kBlock) {
    ok = ::write(fd, buf, kBlock) == static_cast<ssize_t>(kBlock);
  }
  ok = ok && ::fdatasync(fd) == 0;
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  ::close(fd);
  ::free(buf);
  fs::remove(path);
  return ok ? (double(mb) * (1 << 20)) / 1e6 / seconds : -1;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

// One simulated session: its metadata chain (real KvCache bookkeeping under
// streaming(4, window)) and rows of the right size.
struct Sim {
  std::string id;
  SessionState state;  // metadata of the last captured turn; kv empty
  int64_t step = 0;
};

int Run(const Flags& f) {
  std::error_code ec;
  fs::remove_all(f.dir, ec);
  fs::create_directories(f.dir, ec);
  std::fprintf(stderr, "checkpoint_bench: measuring the raw write rate (%d MiB O_DIRECT)...\n",
               f.raw_mb);
  const double raw = RawWriteMBps(f.dir, f.raw_mb);

  RocksDbSessionStoreOptions store_options;
  store_options.sync = false;  // the pipeline syncs once per group
  store_options.wal_max_kv_bytes =
      f.wal_max_kb < 0 ? UINT64_MAX : uint64_t(f.wal_max_kb) << 10;
  auto store = RocksDbSessionStore::Open(f.dir + "/db", store_options);
  if (!store.ok()) {
    std::fprintf(stderr, "checkpoint_bench: %s\n", store.status().ToString().c_str());
    return 1;
  }
  store_testing::SimOptions sim;
  sim.policy = PolicyConfig{PolicyKind::kStreaming, 4, f.window};
  sim.n_layers = f.layers;
  sim.kv_dim = f.kv_dim;
  sim.dtype_bytes = f.dtype_bytes;
  sim.step_tokens = f.turn_tokens;
  sim.prompt_tokens = f.turn_tokens;
  const int64_t cell_bytes = int64_t{2} * f.layers * f.kv_dim * f.dtype_bytes;

  // Random bytes to copy rows from (their content does not matter to the
  // store: no compression; copying is what a capture costs anyway).
  std::string noise(size_t(f.turn_tokens) * cell_bytes, '\0');
  {
    std::mt19937_64 rng(1);
    for (size_t i = 0; i + 8 <= noise.size(); i += 8) {
      const uint64_t r = rng();
      std::memcpy(&noise[i], &r, 8);
    }
  }
  std::vector<Sim> sims(f.sessions);
  std::mutex mu;
  std::vector<double> durable_ms, submit_us;
  std::atomic<int64_t> errors{0};
  std::atomic<int64_t> bytes_done{0};

  CheckpointPipelineOptions options;
  options.writer_threads = f.threads;
  options.sync = f.sync;
  options.buffer_bytes = int64_t{f.buffer_mb} << 20;
  std::atomic<int64_t> admission_waits{0};
  absl::Time start;
  int64_t total_bytes = 0;
  {
    CheckpointPipeline pipeline(store->get(), options);
    auto submit = [&](PendingCheckpoint cp) {
      const int64_t bytes = cp.bytes;
      const absl::Time t0 = absl::Now();
      pipeline.Submit(std::move(cp), [&, bytes](const absl::StatusOr<CheckpointOutcome>& o) {
        if (!o.ok()) {
          if (errors++ == 0)
            std::fprintf(stderr, "checkpoint failed: %s\n", o.status().ToString().c_str());
          return;
        }
        bytes_done += bytes;
        std::lock_guard<std::mutex> lock(mu);
        durable_ms.push_back(absl::ToDoubleMilliseconds(o->queued_to_durable));
      });
      const double us = absl::ToDoubleMicroseconds(absl::Now() - t0);
      std::lock_guard<std::mutex> lock(mu);
      submit_us.push_back(us);
      total_bytes += bytes;
    };
    // Every session's first turn: a full state.
    for (int s = 0; s < f.sessions; ++s) {
      sims[s].id = absl::StrCat("bench-", s);
      SessionState first = store_testing::SimInitialMetadata(sims[s].id, sim);
      PendingCheckpoint cp;
      cp.id = sims[s].id;
      cp.full = first.Copy();
      cp.full->kv = noise.substr(0, first.cache.cells.size() * cell_bytes);
      cp.bytes = static_cast<int64_t>(cp.full->kv.size());
      sims[s].state = std::move(first);
      submit(std::move(cp));
    }
    pipeline.FlushAll();
    {
      std::lock_guard<std::mutex> lock(mu);
      durable_ms.clear();
      submit_us.clear();
      total_bytes = 0;
    }
    bytes_done = 0;
    std::fprintf(stderr, "checkpoint_bench: %d sessions x %d turns of %d tokens (%.1f MB each)\n",
                 f.sessions, f.turns, f.turn_tokens, f.turn_tokens * cell_bytes / 1e6);
    start = absl::Now();
    // Turns end round-robin as fast as the admission allows: the decoder
    // never waits for the store, only new turns wait for staging room.
    for (int t = 1; t <= f.turns; ++t) {
      for (Sim& s : sims) {
        while (pipeline.OverBudget()) {
          ++admission_waits;
          absl::SleepFor(absl::Microseconds(200));
        }
        SessionState next = store_testing::SimStepMetadata(s.state, sim, t);
        absl::StatusOr<SessionDelta> delta = DiffMetadata(s.state, next);
        if (!delta.ok()) {
          std::fprintf(stderr, "checkpoint_bench: %s\n", delta.status().ToString().c_str());
          return 1;
        }
        delta->kv = noise.substr(0, size_t(delta->kv_cells()) * cell_bytes);
        PendingCheckpoint cp;
        cp.id = s.id;
        cp.bytes = static_cast<int64_t>(delta->kv.size());
        cp.delta = *std::move(delta);
        s.state = std::move(next);
        submit(std::move(cp));
      }
      std::fprintf(stderr, "  turn %d/%d submitted (%.0f MB durable so far)\n", t, f.turns,
                   bytes_done.load() / 1e6);
    }
    pipeline.FlushAll();
  }
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  const double mbps = total_bytes / 1e6 / seconds;
  std::printf("raw sequential write (O_DIRECT + fdatasync): %.0f MB/s\n", raw);
  std::printf(
      "store sustained: %.0f MB/s (%.1f%% of raw), %.0f MB in %.2f s, %d writer threads, "
      "sync %d\n",
      mbps, raw > 0 ? 100 * mbps / raw : 0.0, total_bytes / 1e6, seconds, f.threads,
      f.sync ? 1 : 0);
  std::printf("turn end -> durable: p50 %.1f ms, p99 %.1f ms\n", Percentile(durable_ms, 0.5),
              Percentile(durable_ms, 0.99));
  std::printf(
      "decoder's cost per turn end (Submit): p50 %.1f us, p99 %.1f us, max %.1f us; "
      "admission waits %lld\n",
      Percentile(submit_us, 0.5), Percentile(submit_us, 0.99), Percentile(submit_us, 1.0),
      static_cast<long long>(admission_waits.load()));
  store->reset();  // closed (background flushes done) before its files go
  fs::remove_all(f.dir, ec);
  return errors.load() == 0 ? 0 : 1;
}

}  // namespace
}  // namespace sinkserve::memory

int main(int argc, char** argv) {
  sinkserve::memory::Flags flags;
  if (!sinkserve::memory::ParseFlags(argc, argv, &flags)) {
    std::fprintf(stderr,
                 "usage: checkpoint_bench [--sessions=16] [--turns=8] [--layers=32] "
                 "[--kv_dim=4096] [--dtype_bytes=2] [--turn_tokens=70] [--window=252] "
                 "[--threads=2] [--buffer_mb=1024] [--sync=1] [--raw_mb=1024] [--dir=PATH]\n");
    return 2;
  }
  return sinkserve::memory::Run(flags);
}
