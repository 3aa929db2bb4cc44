// Checkpoint and restore cost of a live engine::Session on a real model: the
// whole path a server takes (cache metadata diff, KvStorage::ExportSlots, one
// RocksDB WriteBatch; and back: Load, KvCache::Restore, ImportSlots).
//
//   session_bench [--model=PATH] [--cells=4096] [--turns=32]
//                 [--prompt_tokens=16] [--reply_tokens=16] [--fulls=5]
//                 [--threads=2] [--kv_dtype=f32] [--sync=1]
//                 [--dir=/tmp/session_bench]
//
// Without --model it writes the 428 MB synthetic F32 model of BENCHMARKS.md
// (dim 1024, 8 layers, 16 heads / 4 KV heads, ffn 2816, vocab 8192) into
// --dir first. The session's cache is streaming(4, cells - 4): it is filled
// with `cells` tokens, then each turn adds prompt + reply tokens and evicts as
// many, and is checkpointed incrementally.
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/gguf/gguf_writer.h"
#include "engine/gguf/model_fingerprint.h"
#include "engine/gguf/model_weights.h"
#include "engine/session.h"
#include "memory/rocksdb_session_store.h"

namespace sinkserve::engine {
namespace {

namespace fs = std::filesystem;

struct Flags {
  std::string model;
  int cells = 4096;
  int turns = 32;
  int prompt_tokens = 16;
  int reply_tokens = 16;
  int fulls = 5;
  int threads = 2;
  std::string kv_dtype = "f32";
  bool sync = true;
  std::string dir = "/tmp/session_bench";
};

bool ParseFlags(int argc, char** argv, Flags* f) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) != 0 || eq == std::string::npos) return false;
    const std::string name = arg.substr(2, eq - 2);
    const std::string value = arg.substr(eq + 1);
    const int n = std::atoi(value.c_str());
    if (name == "model") {
      f->model = value;
    } else if (name == "cells") {
      f->cells = n;
    } else if (name == "turns") {
      f->turns = n;
    } else if (name == "prompt_tokens") {
      f->prompt_tokens = n;
    } else if (name == "reply_tokens") {
      f->reply_tokens = n;
    } else if (name == "fulls") {
      f->fulls = n;
    } else if (name == "threads") {
      f->threads = n;
    } else if (name == "kv_dtype") {
      f->kv_dtype = value;
    } else if (name == "sync") {
      f->sync = n != 0;
    } else if (name == "dir") {
      f->dir = value;
    } else {
      return false;
    }
  }
  return f->cells > 8 && f->turns > 0 && f->prompt_tokens > 0 && f->reply_tokens > 0;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

double Mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / v.size();
}

double Ms(absl::Time since) { return absl::ToDoubleMilliseconds(absl::Now() - since); }

// CPU time of this thread: on a shared machine, wall time counts the other
// jobs too; this does not (nor does it count waiting for the disk).
double ThreadCpuMs() {
  timespec ts;
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

// Evicts the store's (clean, closed) files from the page cache.
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
  std::fprintf(stderr, "session_bench: %s\n", s.ToString().c_str());
  std::exit(1);
}

template <typename T>
T Check(absl::StatusOr<T> v) {
  if (!v.ok()) Die(v.status());
  return *std::move(v);
}

std::unique_ptr<memory::RocksDbSessionStore> OpenStore(const Flags& f) {
  memory::RocksDbSessionStoreOptions o;
  o.sync = f.sync;
  return Check(memory::RocksDbSessionStore::Open(f.dir + "/db", o));
}

int Main(int argc, char** argv) {
  Flags f;
  if (!ParseFlags(argc, argv, &f)) {
    std::fprintf(stderr, "usage: see the top of tests/bench/session_bench.cc\n");
    return 2;
  }
  std::error_code ec;
  fs::remove_all(f.dir + "/db", ec);
  fs::create_directories(f.dir, ec);
  if (f.model.empty()) {
    f.model = f.dir + "/synthetic-428mb.gguf";
    if (!fs::exists(f.model)) {
      SyntheticLlamaSpec spec;
      spec.dim = 1024;
      spec.n_layers = 8;
      spec.n_heads = 16;
      spec.n_kv_heads = 4;
      spec.ffn_dim = 2816;
      spec.vocab_size = 8192;
      spec.context_length = 8192;
      if (absl::Status s = WriteSyntheticLlama(spec, f.model); !s.ok()) Die(s);
    }
  }
  auto weights = Check(ModelWeights::Load(f.model));
  auto tokenizer = Check(Tokenizer::FromGguf(weights->file()));
  absl::Time t = absl::Now();
  const std::string fingerprint = ModelFingerprint(weights->file());
  const double fingerprint_ms = Ms(t);
  CpuBackendOptions backend_options;
  backend_options.threads = f.threads;
  backend_options.kv_dtype = Check(ParseKvDtype(f.kv_dtype));
  auto backend = Check(NewCpuBackend(weights, backend_options));

  SessionConfig config;
  config.policy = memory::PolicyConfig{memory::PolicyKind::kStreaming, 4, f.cells - 4};
  config.max_step_tokens = 512;
  config.sampling.temperature = 0;
  auto session = Check(Session::Create("bench", backend.get(), fingerprint, config));
  std::mt19937 rng(1);
  auto random_tokens = [&](int n) {
    std::vector<int32_t> ids(n);
    for (int32_t& id : ids) id = 3 + static_cast<int32_t>(rng() % 8000);
    return ids;
  };
  GeneratorOptions fill;
  fill.max_tokens = 1;
  t = absl::Now();
  Check(session->Turn(*tokenizer, random_tokens(f.cells), fill, {}));
  const double fill_s = Ms(t) / 1e3;

  std::unique_ptr<memory::RocksDbSessionStore> store = OpenStore(f);
  const int64_t kv_bytes = Check(session->Snapshot()).kv.size();
  const double mb = kv_bytes / 1e6;
  std::printf(
      "model %s (%.0f MB, fingerprint %s in %.2f ms)\nsession: %d cells, %.1f MB of %s K/V; "
      "filled in %.1f s; %d + %d tokens per turn; sync %s\n",
      f.model.c_str(), weights->file().file_size() / 1e6, fingerprint.c_str(), fingerprint_ms,
      session->sequence().cache().size(), mb, f.kv_dtype.c_str(), fill_s, f.prompt_tokens,
      f.reply_tokens, f.sync ? "on" : "off");

  // Full checkpoints: what Checkpoint writes the first time (or for
  // `recompute`): Snapshot (ExportSlots of every cell) + Put.
  std::vector<double> full_ms, full_bytes, full_store_ms;
  for (int i = 0; i < f.fulls; ++i) {
    t = absl::Now();
    memory::SessionState state = Check(session->Snapshot());
    memory::CheckpointResult r = Check(store->Put(state));
    full_ms.push_back(Ms(t));
    full_store_ms.push_back(absl::ToDoubleMilliseconds(r.latency));
    full_bytes.push_back(r.bytes_written);
  }
  // The session's own first checkpoint (full), then one per turn (deltas).
  Check(session->Checkpoint(store.get()));
  if (absl::Status s = store->Flush(); !s.ok()) Die(s);

  GeneratorOptions reply;
  reply.max_tokens = f.reply_tokens;
  reply.stop_at_end_of_text = false;
  std::vector<double> delta_ms, delta_bytes, turn_ms;
  for (int i = 0; i < f.turns; ++i) {
    t = absl::Now();
    Check(session->Turn(*tokenizer, random_tokens(f.prompt_tokens), reply, {}));
    turn_ms.push_back(Ms(t));
    t = absl::Now();
    memory::CheckpointResult r = Check(session->Checkpoint(store.get()));
    delta_ms.push_back(Ms(t));
    delta_bytes.push_back(r.bytes_written);
    if (r.full) Die(absl::InternalError("a turn's checkpoint was not incremental"));
  }
  store->WaitForCompactions();
  if (absl::Status s = store->Flush(); !s.ok()) Die(s);

  std::printf("\n%-12s %6s %13s %8s %8s %8s %9s\n", "checkpoint", "count", "bytes (mean)",
              "p50 ms", "p99 ms", "max ms", "MB/s p50");
  auto row = [](const char* name, const std::vector<double>& ms,
                const std::vector<double>& bytes) {
    std::printf("%-12s %6zu %13.0f %8.2f %8.2f %8.2f %9.1f\n", name, ms.size(), Mean(bytes),
                Percentile(ms, 0.5), Percentile(ms, 0.99), Percentile(ms, 1.0),
                Mean(bytes) / 1e6 / (Percentile(ms, 0.5) / 1e3));
  };
  row("full", full_ms, full_bytes);
  row("incremental", delta_ms, delta_bytes);
  std::printf("full: store Put alone p50 %.2f ms; incremental / full bytes %.4f; "
              "turn (prefill + decode) p50 %.0f ms\n",
              Percentile(full_store_ms, 0.5), Mean(delta_bytes) / Mean(full_bytes),
              Percentile(turn_ms, 0.5));

  // Restore: Load (replay the chain, check every CRC) + Session::Restore
  // (KvCache::Restore, NewKvStorage, ImportSlots); warm = store open and its
  // files in the page cache, cold = page cache dropped and store reopened.
  const memory::SessionState want = Check(session->Snapshot());
  auto restore = [&](double* load_ms, double* build_ms, double* cpu_ms) {
    const double cpu_start = ThreadCpuMs();
    absl::Time start = absl::Now();
    memory::LoadedSession loaded = Check(store->Load("bench", fingerprint));
    *load_ms = Ms(start);
    start = absl::Now();
    auto restored = Check(Session::Restore(backend.get(), fingerprint, std::move(loaded.state),
                                           loaded.version));
    *build_ms = Ms(start);
    *cpu_ms = ThreadCpuMs() - cpu_start;
    if (Check(restored->Snapshot()).kv != want.kv) {
      Die(absl::InternalError("restored K/V rows differ"));
    }
  };
  std::vector<double> warm_load, warm_build, warm_cpu, cold_load, cold_build, cold_cpu, open_ms;
  for (int i = 0; i < 5; ++i) {
    double l, b, c;
    restore(&l, &b, &c);
    warm_load.push_back(l);
    warm_build.push_back(b);
    warm_cpu.push_back(c);
  }
  for (int i = 0; i < 3; ++i) {
    store.reset();
    DropPageCache(f.dir + "/db");
    t = absl::Now();
    store = OpenStore(f);
    open_ms.push_back(Ms(t));
    double l, b, c;
    restore(&l, &b, &c);
    cold_load.push_back(l);
    cold_build.push_back(b);
    cold_cpu.push_back(c);
  }
  std::printf("\nrestore of %.1f MB     load ms  restore ms  total ms   MB/s   cpu ms  MB/cpu-s\n",
              mb);
  auto line = [mb](const char* name, const std::vector<double>& l, const std::vector<double>& b,
                   const std::vector<double>& c) {
    const double total = Percentile(l, 0.5) + Percentile(b, 0.5);
    std::printf("  %-18s %8.1f %11.1f %9.1f %6.0f %8.1f %9.0f\n", name, Percentile(l, 0.5),
                Percentile(b, 0.5), total, mb / (total / 1e3), Percentile(c, 0.5),
                mb / (Percentile(c, 0.5) / 1e3));
  };
  line("warm", warm_load, warm_build, warm_cpu);
  line("cold", cold_load, cold_build, cold_cpu);
  std::printf("  (store open before a cold load: %.1f ms)\n", Percentile(open_ms, 0.5));
  // The backend's share of "restore ms": a zeroed storage, then the rows.
  std::vector<double> alloc_ms, import_ms;
  const memory::KvCache& cache = session->sequence().cache();
  for (int i = 0; i < 5; ++i) {
    t = absl::Now();
    std::unique_ptr<KvStorage> kv = Check(backend->NewKvStorage(cache.capacity()));
    alloc_ms.push_back(Ms(t));
    t = absl::Now();
    if (absl::Status s = kv->ImportSlots(cache.context_slots(), want.kv); !s.ok()) Die(s);
    import_ms.push_back(Ms(t));
  }
  std::printf("  (of restore: NewKvStorage %.1f ms, ImportSlots %.1f ms = %.0f MB/s)\n",
              Percentile(alloc_ms, 0.5), Percentile(import_ms, 0.5),
              mb / (Percentile(import_ms, 0.5) / 1e3));
  store.reset();
  fs::remove_all(f.dir + "/db", ec);
  return 0;
}

}  // namespace
}  // namespace sinkserve::engine

int main(int argc, char** argv) { return sinkserve::engine::Main(argc, argv); }
