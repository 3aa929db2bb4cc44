// Checkpoint and restore cost of RocksDbSessionStore for one session of a
// given cache shape: full snapshots vs incremental deltas (bytes written,
// latency p50/p99), and restore throughput cold (page cache dropped for the
// store's files, store reopened) and warm.
//
//   store_bench [--layers=8] [--kv_dim=512] [--dtype_bytes=2] [--cells=4096]
//               [--step_tokens=16] [--fulls=5] [--deltas=64]
//               [--compact_after=16] [--sync=1] [--dir=/tmp/store_bench]
//
// The shape of a model's cache: layers x kv_dim (n_kv_heads * head_dim) x
// dtype bytes; a cell holds 2 * layers * kv_dim * dtype_bytes bytes.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "memory/rocksdb_session_store.h"
#include "memory/session_state.h"
#include "memory/session_testing.h"

namespace sinkserve::memory {
namespace {

namespace fs = std::filesystem;

struct Flags {
  int layers = 8;
  int kv_dim = 512;
  int dtype_bytes = 2;
  int cells = 4096;
  int step_tokens = 16;
  int fulls = 5;
  int deltas = 64;
  int compact_after = 16;
  bool sync = true;
  std::string dir = "/tmp/store_bench";
};

bool ParseFlags(int argc, char** argv, Flags* f) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) != 0 || eq == std::string::npos) return false;
    const std::string name = arg.substr(2, eq - 2);
    const std::string value = arg.substr(eq + 1);
    const int n = std::atoi(value.c_str());
    if (name == "layers")
      f->layers = n;
    else if (name == "kv_dim")
      f->kv_dim = n;
    else if (name == "dtype_bytes")
      f->dtype_bytes = n;
    else if (name == "cells")
      f->cells = n;
    else if (name == "step_tokens")
      f->step_tokens = n;
    else if (name == "fulls")
      f->fulls = n;
    else if (name == "deltas")
      f->deltas = n;
    else if (name == "compact_after")
      f->compact_after = n;
    else if (name == "sync")
      f->sync = n != 0;
    else if (name == "dir")
      f->dir = value;
    else
      return false;
  }
  return true;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * v.size()));
  return v[i];
}

double Mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / v.size();
}

// Evicts the store's files from the page cache (they are clean after the
// store closed), so the next read comes from the disk.
void DropPageCache(const std::string& dir) {
  ::sync();
  for (const fs::directory_entry& e : fs::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    const int fd = ::open(e.path().c_str(), O_RDONLY);
    if (fd < 0) continue;
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

[[noreturn]] void Die(const absl::Status& s) {
  std::fprintf(stderr, "store_bench: %s\n", s.ToString().c_str());
  std::exit(1);
}

std::unique_ptr<RocksDbSessionStore> OpenStore(const Flags& f) {
  RocksDbSessionStoreOptions o;
  o.sync = f.sync;
  o.compact_after_deltas = f.compact_after;
  absl::StatusOr<std::unique_ptr<RocksDbSessionStore>> s =
      RocksDbSessionStore::Open(f.dir, o);
  if (!s.ok()) Die(s.status());
  return *std::move(s);
}

int Main(int argc, char** argv) {
  Flags f;
  if (!ParseFlags(argc, argv, &f)) {
    std::fprintf(stderr, "usage: see the top of tests/bench/store_bench.cc\n");
    return 2;
  }
  std::error_code ec;
  fs::remove_all(f.dir, ec);

  store_testing::SimOptions sim;
  sim.n_layers = f.layers;
  sim.kv_dim = f.kv_dim;
  sim.dtype_bytes = f.dtype_bytes;
  sim.policy = PolicyConfig{PolicyKind::kStreaming, 4, f.cells - 4, 0, 1.0f};
  sim.prompt_tokens = f.cells;
  sim.step_tokens = f.step_tokens;
  SessionState state = store_testing::SimInitialMetadata("bench", sim);
  state.kv = store_testing::SimRows(state, state.cache.cells);
  const double mb = state.kv.size() / 1e6;
  std::printf(
      "session: %d cells x %d layers x kv_dim %d x %d bytes = %.1f MB of K/V; "
      "%d tokens per incremental checkpoint; sync %s\n",
      f.cells, f.layers, f.kv_dim, f.dtype_bytes, mb, f.step_tokens,
      f.sync ? "on" : "off");

  std::unique_ptr<RocksDbSessionStore> store = OpenStore(f);
  std::vector<double> full_ms, full_bytes;
  uint64_t version = 0;
  for (int i = 0; i < f.fulls; ++i) {
    state.updated_at += absl::Seconds(1);
    absl::StatusOr<CheckpointResult> r = store->Put(state);
    if (!r.ok()) Die(r.status());
    full_ms.push_back(absl::ToDoubleMilliseconds(r->latency));
    full_bytes.push_back(r->bytes_written);
    version = r->version;
  }

  // Let the memtables holding the full snapshots reach their blob files now,
  // rather than behind the incremental checkpoints measured next.
  const absl::Time flush_start = absl::Now();
  if (absl::Status s = store->Flush(); !s.ok()) Die(s);
  const double flush_ms = absl::ToDoubleMilliseconds(absl::Now() - flush_start);

  std::vector<double> delta_ms, delta_bytes;
  state.kv.clear();  // a live session exports only the new rows
  for (int i = 1; i <= f.deltas; ++i) {
    SessionState next = store_testing::SimStepMetadata(state, sim, i);
    absl::StatusOr<SessionDelta> delta = DiffMetadata(state, next);
    if (!delta.ok()) Die(delta.status());
    delta->kv = store_testing::SimRows(next, delta->added);
    absl::StatusOr<CheckpointResult> r =
        store->Append("bench", version, *delta);
    if (!r.ok()) Die(r.status());
    delta_ms.push_back(absl::ToDoubleMilliseconds(r->latency));
    delta_bytes.push_back(r->bytes_written);
    version = r->version;
    state = std::move(next);
  }
  store->WaitForCompactions();
  if (absl::Status s = store->Flush(); !s.ok()) Die(s);
  const StoreStats stats = store->stats();

  std::printf("\n%-12s %6s %13s %8s %8s %8s %8s %9s\n", "checkpoint", "count",
              "bytes (mean)", "p50 ms", "p90 ms", "p99 ms", "max ms",
              "MB/s p50");
  auto row = [](const char* name, const std::vector<double>& ms,
                const std::vector<double>& bytes) {
    std::printf("%-12s %6zu %13.0f %8.2f %8.2f %8.2f %8.2f %9.1f\n", name,
                ms.size(), Mean(bytes), Percentile(ms, 0.5),
                Percentile(ms, 0.9), Percentile(ms, 0.99), Percentile(ms, 1.0),
                Mean(bytes) / 1e6 / (Percentile(ms, 0.5) / 1e3));
  };
  row("full", full_ms, full_bytes);
  row("incremental", delta_ms, delta_bytes);
  std::printf("flush of the full snapshots' memtables: %.0f ms\n", flush_ms);
  std::printf(
      "incremental / full bytes: %.4f; background folds: %llu (%.0f MB)\n",
      Mean(delta_bytes) / Mean(full_bytes),
      static_cast<unsigned long long>(stats.compactions),
      stats.compaction_bytes_written / 1e6);

  // Restore: warm (store open, files in the page cache) and cold.
  std::vector<double> warm_ms, cold_ms;
  int64_t records = 0;
  for (int i = 0; i < 5; ++i) {
    const absl::Time t = absl::Now();
    absl::StatusOr<LoadedSession> got = store->Load("bench", sim.fingerprint);
    if (!got.ok()) Die(got.status());
    warm_ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - t));
    records = got->records;
  }
  std::vector<double> open_ms;
  for (int i = 0; i < 3; ++i) {
    store.reset();
    DropPageCache(f.dir);
    absl::Time t = absl::Now();
    store = OpenStore(f);  // replays the WAL: part of a restart
    open_ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - t));
    t = absl::Now();
    absl::StatusOr<LoadedSession> got = store->Load("bench", sim.fingerprint);
    if (!got.ok()) Die(got.status());
    cold_ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - t));
  }
  std::printf("\nrestore (%lld records, %.1f MB)  p50 ms   MB/s\n",
              static_cast<long long>(records), mb);
  std::printf("  warm                      %8.1f %6.0f\n",
              Percentile(warm_ms, 0.5), mb / (Percentile(warm_ms, 0.5) / 1e3));
  std::printf("  cold load                 %8.1f %6.0f\n",
              Percentile(cold_ms, 0.5), mb / (Percentile(cold_ms, 0.5) / 1e3));
  std::printf("  (store open before it     %8.1f ms)\n",
              Percentile(open_ms, 0.5));
  store.reset();
  fs::remove_all(f.dir, ec);
  return 0;
}

}  // namespace
}  // namespace sinkserve::memory

int main(int argc, char** argv) { return sinkserve::memory::Main(argc, argv); }
