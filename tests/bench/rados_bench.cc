// Restore from RADOS vs from local RocksDB (MB/s of K/V rows), and the
// latency of one incremental checkpoint (Append) to RADOS, p50/p99.
//
//   scripts/cluster start /tmp/c
//   build/tests/rados_bench --conf /tmp/c/ceph.conf [--mb 64] [--loads 5]
//       [--checkpoints 200]
//   scripts/cluster stop /tmp/c
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "memory/rados_session_store.h"
#include "memory/rocksdb_session_store.h"
#include "memory/session_state.h"
#include "memory/session_testing.h"

namespace {

using namespace sinkserve::memory;  // NOLINT: a small benchmark program

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

// Median MB/s of `loads` Loads of `state` from `store`.
double RestoreMbps(SessionStore& store, const SessionState& state, int loads) {
  std::vector<double> mbps;
  for (int i = 0; i < loads; ++i) {
    const absl::Time start = absl::Now();
    absl::StatusOr<LoadedSession> got = store.Load(state.id, state.model_fingerprint);
    const double s = absl::ToDoubleSeconds(absl::Now() - start);
    if (!got.ok() || got->state.kv != state.kv) {
      std::fprintf(stderr, "load failed: %s\n", got.status().ToString().c_str());
      std::exit(1);
    }
    mbps.push_back(state.kv.size() / 1e6 / s);
  }
  return Median(mbps);
}

}  // namespace

int main(int argc, char** argv) {
  std::string conf;
  int mb = 64, loads = 5, checkpoints = 200;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--conf") conf = argv[i + 1];
    else if (flag == "--mb") mb = std::atoi(argv[i + 1]);
    else if (flag == "--loads") loads = std::atoi(argv[i + 1]);
    else if (flag == "--checkpoints") checkpoints = std::atoi(argv[i + 1]);
  }
  if (conf.empty()) {
    std::fprintf(stderr, "usage: rados_bench --conf CEPH_CONF [--mb N] [--loads N] "
                         "[--checkpoints N]\n");
    return 2;
  }
  RadosSessionStoreOptions ro;
  ro.conf_path = conf;
  ro.rados_namespace = absl::StrCat("bench-", absl::ToUnixMicros(absl::Now()));
  absl::StatusOr<std::unique_ptr<RadosSessionStore>> rados = RadosSessionStore::Open(ro);
  if (!rados.ok()) {
    std::fprintf(stderr, "%s\n", rados.status().ToString().c_str());
    return 1;
  }
  const std::string dir =
      absl::StrCat(std::filesystem::temp_directory_path().string(), "/rados_bench.",
                   absl::ToUnixMicros(absl::Now()));
  absl::StatusOr<std::unique_ptr<RocksDbSessionStore>> rocks = RocksDbSessionStore::Open(dir);
  if (!rocks.ok()) {
    std::fprintf(stderr, "%s\n", rocks.status().ToString().c_str());
    return 1;
  }

  // A session of `mb` MB of K/V rows: 16 layers x 1024 kv_dim x f32.
  std::mt19937_64 rng(1);
  store_testing::RandomStateOptions o;
  o.n_layers = 16;
  o.kv_dim = 1024;
  o.cells = std::max(1, static_cast<int>((int64_t{mb} << 20) / (2 * 16 * 1024 * 4)));
  o.capacity = o.cells + 64;
  const SessionState big = store_testing::RandomState(rng, "big", o);
  if (!(*rados)->Put(big).ok() || !(*rocks)->Put(big).ok() || !(*rocks)->Flush().ok()) {
    std::fprintf(stderr, "put failed\n");
    return 1;
  }
  const double rados_mbps = RestoreMbps(**rados, big, loads);
  const double rocks_mbps = RestoreMbps(**rocks, big, loads);
  std::printf("restore of %.1f MB: RADOS %.0f MB/s, RocksDB %.0f MB/s (median of %d)\n",
              big.kv.size() / 1e6, rados_mbps, rocks_mbps, loads);

  // Incremental checkpoints of a chatting session (1..8 tokens a step, 8
  // layers x 256 kv_dim), folded every 16 in the background as a server does.
  store_testing::SimOptions sim;
  sim.n_layers = 8;
  sim.kv_dim = 256;
  SessionState prev = store_testing::SimStateAt("chat", sim, 0);
  absl::StatusOr<CheckpointResult> r = (*rados)->Put(prev);
  std::vector<double> ms;
  for (int step = 1; r.ok() && step <= checkpoints; ++step) {
    SessionState next = store_testing::SimStateAt("chat", sim, step);
    absl::StatusOr<SessionDelta> delta = Diff(prev, next);
    r = (*rados)->Append("chat", r->version, *delta);
    if (r.ok()) ms.push_back(absl::ToDoubleMilliseconds(r->latency));
    prev = std::move(next);
  }
  if (!r.ok()) {
    std::fprintf(stderr, "append failed: %s\n", r.status().ToString().c_str());
    return 1;
  }
  std::printf("incremental checkpoint to RADOS: p50 %.2f ms, p99 %.2f ms (%zu checkpoints)\n",
              Percentile(ms, 0.5), Percentile(ms, 0.99), ms.size());
  rocks->reset();
  std::filesystem::remove_all(dir);
  return 0;
}
