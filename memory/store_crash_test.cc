// Crash safety of RocksDbSessionStore: store_crash_writer checkpoints
// simulated sessions (fsync on, deltas, full snapshots, compaction) and is
// SIGKILLed at random moments, 20 times over the same store. After every kill
// the store must open, verify clean, and hold each session at exactly the last
// step the writer reported done, or the one after (in flight when it died):
// never anything half-written.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "memory/rocksdb_session_store.h"
#include "memory/session_testing.h"

namespace sinkserve::memory {
namespace {

namespace fs = std::filesystem;

std::string WriterPath() {
  if (const char* env = std::getenv("SINKSERVE_STORE_CRASH_WRITER")) return env;
  // CMake and Bazel both put it next to this test.
  return (fs::read_symlink("/proc/self/exe").parent_path() /
          "store_crash_writer")
      .string();
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

struct WriterRun {
  int64_t last_done = -1;  // highest "done N" line read, -1 if none
  bool killed = false;
  int status = 0;
};

// Starts the writer, kills it `delay` after its first report (the store is
// open and resumed by then: a slow open on a loaded machine must not eat the
// run), returns what it reported.
WriterRun RunAndKill(const std::vector<std::string>& args,
                     std::chrono::milliseconds delay,
                     const std::string& stderr_path) {
  int fds[2];
  if (::pipe(fds) != 0) std::abort();
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], STDOUT_FILENO);
    const int err =
        ::open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (err >= 0) ::dup2(err, STDERR_FILENO);
    ::close(fds[0]);
    std::vector<char*> argv;
    for (const std::string& a : args)
      argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  std::string out;
  char buf[4096];
  // Up to 60 s for the first line; a writer that dies first is reported by
  // the caller (not killed).
  const auto open_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (out.find('\n') == std::string::npos &&
         std::chrono::steady_clock::now() < open_deadline) {
    pollfd p{fds[0], POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    const ssize_t n = ::read(fds[0], buf, sizeof(buf));
    if (n <= 0) break;
    out.append(buf, n);
  }
  std::this_thread::sleep_for(delay);
  ::kill(pid, SIGKILL);
  WriterRun run;
  ::waitpid(pid, &run.status, 0);
  run.killed = WIFSIGNALED(run.status) && WTERMSIG(run.status) == SIGKILL;
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof(buf))) > 0;)
    out.append(buf, n);
  ::close(fds[0]);
  std::istringstream lines(out);
  std::string word;
  int64_t n;
  while (lines >> word >> n) {
    if (word == "done") run.last_done = std::max(run.last_done, n);
  }
  return run;
}

// Kills the writer (with `extra` flags) kKills times; each session must then
// be at a step in [reported, reported + ahead], exactly as simulated.
// The writer must have reported more than `min_reported` steps in all.
void KillAndCheck(const std::vector<std::string>& extra, int64_t ahead,
                  int64_t min_reported = 20) {
  const std::string writer = WriterPath();
  ASSERT_TRUE(fs::exists(writer)) << writer << " not built";
  const char* tmp = std::getenv("TEST_TMPDIR");
  std::string dir = std::string(tmp ? tmp : "/tmp") + "/store_crash.XXXXXX";
  ASSERT_NE(::mkdtemp(dir.data()), nullptr);
  const std::string db = dir + "/db";
  const std::string err = dir + "/writer.stderr";

  const uint64_t seed = std::random_device()();
  std::mt19937_64 rng(seed);
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  store_testing::SimOptions sim;
  // 4 KiB per cell, ~256 KiB per full record: big enough that records span
  // several write(2) calls (a kill can tear one, and recovery must drop it
  // whole), small enough for a few hundred checkpoints per run.
  sim.n_layers = 4;
  sim.kv_dim = 256;
  constexpr int kSessions = 3;
  constexpr int kKills = 20;

  int64_t reported = -1;  // across runs: the store must never go back
  int in_flight_seen = 0;
  for (int kill = 0; kill < kKills; ++kill) {
    std::vector<std::string> args = {writer, "--dir=" + db,
                                     "--sessions=" + std::to_string(kSessions),
                                     "--layers=4", "--kv_dim=256"};
    if (kill % 2 == 1) args.push_back("--inline_compaction");
    args.insert(args.end(), extra.begin(), extra.end());
    const auto delay = std::chrono::milliseconds(20 + rng() % 280);
    const WriterRun run = RunAndKill(args, delay, err);
    ASSERT_TRUE(run.killed)
        << "writer exited by itself (status " << run.status << "):\n"
        << ReadFile(err);
    reported = std::max(reported, run.last_done);

    RocksDbSessionStoreOptions options;
    options.background_compaction = false;
    absl::StatusOr<std::unique_ptr<RocksDbSessionStore>> store =
        RocksDbSessionStore::Open(db, options);
    ASSERT_TRUE(store.ok()) << "kill " << kill << ": " << store.status();
    absl::StatusOr<VerifyReport> report = (*store)->Verify();
    ASSERT_TRUE(report.ok()) << report.status();
    for (const BadSession& bad : report->bad) {
      ADD_FAILURE() << "kill " << kill << ": " << bad.id << ": " << bad.status;
    }
    for (int i = 0; i < kSessions; ++i) {
      const std::string id = "crash-" + std::to_string(i);
      absl::StatusOr<LoadedSession> got = (*store)->Load(id, sim.fingerprint);
      if (absl::IsNotFound(got.status())) {
        EXPECT_EQ(reported, -1) << "kill " << kill << ": " << id
                                << " vanished after step " << reported;
        continue;
      }
      ASSERT_TRUE(got.ok()) << "kill " << kill << ": " << got.status();
      const int64_t step = got->state.turns;
      EXPECT_TRUE(step >= reported && step <= reported + ahead)
          << "kill " << kill << ": " << id << " at step " << step
          << ", writer reported " << reported;
      if (step > reported) ++in_flight_seen;
      EXPECT_EQ(store_testing::Difference(
                    got->state, store_testing::SimStateAt(id, sim, step)),
                "")
          << "kill " << kill << ": " << id << " step " << step;
    }
  }
  // The kills must have hit a writer that was making progress.
  EXPECT_GT(reported, min_reported) << ReadFile(err);
  std::printf(
      "%d kills, last reported step %lld, %d sessions caught in flight\n",
      kKills, static_cast<long long>(reported), in_flight_seen);
  std::error_code ec;
  fs::remove_all(dir, ec);
}

TEST(StoreCrashTest, SigkillNeverLeavesAHalfWrittenCheckpoint) {
  KillAndCheck({}, /*ahead=*/1);
}

// The server's asynchronous path: the writer runs up to 4 steps ahead of
// what is durable, so every kill lands on a backlog of queued deltas (and
// writer threads in the middle of groups). No step reported durable may be
// lost, and no session may be left unreadable or between steps.
TEST(StoreCrashTest, SigkillDuringABacklogOfQueuedDeltas) {
  constexpr int kBacklog = 4;
  KillAndCheck({"--pipeline", "--backlog=" + std::to_string(kBacklog)},
               /*ahead=*/kBacklog + 1);
}

// Every checkpoint with rows skips the WAL and becomes durable by a flush
// (wal_max_kv_bytes 0), while folds and small writes still use the WAL: the
// ordering rules must keep every session at a whole checkpoint.
TEST(StoreCrashTest, SigkillWithWalLessCheckpoints) {
  KillAndCheck({"--wal_max_kv_bytes=0"}, /*ahead=*/1);
}

TEST(StoreCrashTest, SigkillDuringABacklogOfWalLessCheckpoints) {
  constexpr int kBacklog = 4;
  // Each group of tiny checkpoints costs a memtable flush here: slower.
  KillAndCheck({"--pipeline", "--backlog=" + std::to_string(kBacklog), "--wal_max_kv_bytes=0"},
               /*ahead=*/kBacklog + 1, /*min_reported=*/8);
}

}  // namespace
}  // namespace sinkserve::memory
