// RocksDbSessionStore under damage and failing storage: corrupt records,
// damaged export files, missing / read-only / full directories.
#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "memory/rocksdb_session_store.h"
#include "memory/session_state.h"
#include "memory/session_testing.h"
#include "memory/snapshot_format.h"
#include "memory/store_test_util.h"

namespace sinkserve::memory {
namespace {

namespace fs = std::filesystem;
using store_testing::Difference;
using store_testing::ExpectLoads;
using store_testing::RawDb;
using store_testing::RunChain;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAreArray;
using SessionStoreTest = store_testing::SessionStoreTest;

TEST_F(SessionStoreTest, CorruptRecordsAreDataLossForTheirSessionOnly) {
  RocksDbSessionStoreOptions o;
  o.kv_chunk_bytes = 64 << 10;
  o.compact_after_deltas = 0;
  RocksDbSessionStore* store = &Open(o);
  const std::vector<std::string> ids = {
      "a-flipped-delta",  "b-cut-chunk", "c-bad-header", "d-lost-chunk",
      "e-foreign-record", "f-fine",      "g-fine",       "h-fine"};
  store_testing::SimOptions sim;
  sim.n_layers = 8;
  sim.kv_dim = 256;
  std::vector<SessionState> finals;
  std::vector<uint64_t> first_version;
  for (const std::string& id : ids) {
    SessionState prev = store_testing::SimStateAt(id, sim, 0);
    absl::StatusOr<CheckpointResult> r = store->Put(prev);
    ASSERT_TRUE(r.ok());
    first_version.push_back(r->version);
    for (int step = 1; step <= 2; ++step) {
      SessionState next = store_testing::SimStateAt(id, sim, step);
      r = store->Append(id, r->version, *Diff(prev, next));
      ASSERT_TRUE(r.ok()) << r.status();
      prev = std::move(next);
    }
    finals.push_back(std::move(prev));
  }
  store_.reset();
  {
    RawDb raw(dir_ + "/db");
    using S = RocksDbSessionStore;
    std::string v =
        raw.Get(raw.kv(), S::RecordKey(ids[0], first_version[0] + 1, 0));
    v[v.size() / 2] ^= 0x10;
    raw.Put(raw.kv(), S::RecordKey(ids[0], first_version[0] + 1, 0), v);
    v = raw.Get(raw.kv(), S::RecordKey(ids[1], first_version[1], 1));
    raw.Put(raw.kv(), S::RecordKey(ids[1], first_version[1], 1),
            v.substr(0, v.size() / 2));
    raw.Put(raw.meta(), S::MetaKey(ids[2]), "not a header");
    raw.Delete(raw.kv(), S::RecordKey(ids[3], first_version[3], 2));
    // A valid record, but of another session.
    raw.Put(raw.kv(), S::RecordKey(ids[4], first_version[4] + 2, 0),
            raw.Get(raw.kv(), S::RecordKey(ids[5], first_version[5] + 2, 0)));
  }
  store = &Open(o);
  const std::vector<std::string> want_in_message = {
      "record " + std::to_string(first_version[0] + 1) + ": delta frame",
      "record " + std::to_string(first_version[1]) + " kv chunk 1", "header",
      "kv chunk 2", "record " + std::to_string(first_version[4] + 2)};
  for (size_t i = 0; i < ids.size(); ++i) {
    absl::StatusOr<LoadedSession> got = store->Load(ids[i], "sim-model");
    if (i < 5) {
      ASSERT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << ids[i];
      const std::string msg(got.status().message());
      EXPECT_THAT(msg, HasSubstr("session " + ids[i])) << msg;
      EXPECT_THAT(msg, HasSubstr(want_in_message[i])) << msg;
    } else {
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(Difference(got->state, finals[i]), "");
    }
  }
  absl::StatusOr<VerifyReport> report = store->Verify();
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->sessions_checked, 8);
  std::vector<std::string> bad;
  for (const BadSession& b : report->bad) {
    bad.push_back(b.id);
    EXPECT_EQ(b.status.code(), absl::StatusCode::kDataLoss) << b.status;
  }
  EXPECT_THAT(bad, UnorderedElementsAreArray(
                       std::vector<std::string>(ids.begin(), ids.begin() + 5)));
  // List shows the unreadable header instead of failing.
  absl::StatusOr<ListPage> page = store->List({});
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->sessions.size(), 7u);
  ASSERT_EQ(page->bad.size(), 1u);
  EXPECT_EQ(page->bad[0].id, ids[2]);
  // A broken session can be replaced or deleted.
  ASSERT_TRUE(store->Put(finals[2]).ok());
  ExpectLoads(*store, finals[2]);
  ASSERT_TRUE(store->Delete(ids[0]).ok());
  ASSERT_TRUE(store->Put(finals[1]).ok());
  report = store->Verify();
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->bad.size(), 2u);  // d and e remain
}

TEST_F(SessionStoreTest, ExportImportRoundTripsAndRejectsDamagedFiles) {
  RocksDbSessionStoreOptions o;
  o.compact_after_deltas = 0;
  RocksDbSessionStore& store = Open(o);
  std::vector<SessionState> states;
  for (int i = 0; i < 3; ++i) {
    states.push_back(BigState(200 + i, "exp-" + std::to_string(i)));
    ASSERT_TRUE(store.Put(states.back()).ok());
  }
  RunChain(store, "exp-chain", 5, false);
  states.push_back(
      store_testing::SimStateAt("exp-chain", store_testing::SimOptions(), 5));
  const std::string file = dir_ + "/sessions.export";
  absl::StatusOr<TransferResult> exported = store.Export(file);
  ASSERT_TRUE(exported.ok()) << exported.status();
  EXPECT_EQ(exported->sessions, 4);
  EXPECT_EQ(exported->bytes, fs::file_size(file));

  auto open_other = [&](const std::string& name) {
    absl::StatusOr<std::unique_ptr<RocksDbSessionStore>> s =
        RocksDbSessionStore::Open(dir_ + "/" + name);
    EXPECT_TRUE(s.ok()) << s.status();
    return *std::move(s);
  };
  {
    auto other = open_other("imported");
    absl::StatusOr<TransferResult> imported = other->Import(file);
    ASSERT_TRUE(imported.ok()) << imported.status();
    EXPECT_EQ(imported->sessions, 4);
    for (const SessionState& s : states) ExpectLoads(*other, s);
    EXPECT_EQ(other->Import(file).status().code(),
              absl::StatusCode::kAlreadyExists);
    ImportOptions overwrite;
    overwrite.overwrite = true;
    EXPECT_TRUE(other->Import(file, overwrite).ok());
  }

  std::string bytes;
  {
    std::ifstream in(file, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto write = [&](const std::string& path, const std::string& content) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << content;
  };
  auto other = open_other("damaged");
  std::mt19937_64 rng(5);
  std::vector<size_t> cuts = {0,
                              10,
                              16,
                              17,
                              100,
                              bytes.size() / 2,
                              bytes.size() - 30,
                              bytes.size() - 1};
  for (size_t cut : cuts) {
    write(file + ".cut", bytes.substr(0, cut));
    absl::StatusOr<TransferResult> r = other->Import(file + ".cut");
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss)
        << "cut at " << cut << ": " << r.status();
  }
  for (int i = 0; i < 8; ++i) {
    std::string flipped = bytes;
    flipped[rng() % flipped.size()] ^= static_cast<char>(1 + rng() % 255);
    write(file + ".flip", flipped);
    absl::StatusOr<TransferResult> r = other->Import(file + ".flip");
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
  }
  write(file + ".extra", bytes + "junk");
  EXPECT_EQ(other->Import(file + ".extra").status().code(),
            absl::StatusCode::kDataLoss);
  absl::StatusOr<ListPage> page = other->List({});
  ASSERT_TRUE(page.ok());
  EXPECT_TRUE(page->sessions.empty()) << "a damaged import wrote something";

  // Export of chosen sessions only.
  const std::vector<std::string> one = {"exp-1"};
  ASSERT_TRUE(store.Export(file + ".one", one).ok());
  ASSERT_TRUE(other->Import(file + ".one").ok());
  ExpectLoads(*other, states[1]);
  EXPECT_FALSE(*other->Exists("exp-0"));
  EXPECT_EQ(
      store.Export(file + ".none", {std::string("missing")}).status().code(),
      absl::StatusCode::kNotFound);
  EXPECT_FALSE(fs::exists(file + ".none"));
}

TEST_F(SessionStoreTest, MissingDirectory) {
  RocksDbSessionStoreOptions o;
  o.create_if_missing = false;
  absl::StatusOr<std::unique_ptr<RocksDbSessionStore>> s =
      RocksDbSessionStore::Open(dir_ + "/nope", o);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.status().message()), HasSubstr(dir_ + "/nope"));
  // An existing but empty directory is no store either.
  fs::create_directories(dir_ + "/empty");
  s = RocksDbSessionStore::Open(dir_ + "/empty", o);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kNotFound);
  o.create_if_missing = true;
  s = RocksDbSessionStore::Open(dir_ + "/a/b/c", o);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(fs::is_directory(dir_ + "/a/b/c"));
  // Files and foreign databases are refused, not taken over.
  std::ofstream(dir_ + "/file") << "x";
  EXPECT_EQ(RocksDbSessionStore::Open(dir_ + "/file").status().code(),
            absl::StatusCode::kFailedPrecondition);
  {
    rocksdb::Options raw;
    raw.create_if_missing = true;
    rocksdb::DB* db = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(raw, dir_ + "/foreign", &db).ok());
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), "k", "v").ok());
    delete db;
  }
  absl::StatusOr<std::unique_ptr<RocksDbSessionStore>> foreign =
      RocksDbSessionStore::Open(dir_ + "/foreign");
  EXPECT_EQ(foreign.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(foreign.status().message()), HasSubstr("marker"));
}

TEST_F(SessionStoreTest, NewerStoreVersionIsRefused) {
  Open();
  store_.reset();
  {
    RawDb raw(dir_ + "/db");
    raw.Put(
        raw.def(), std::string(RocksDbSessionStore::kStoreMarkerKey),
        snapshot::EncodeStoreMarker(RocksDbSessionStore::kStoreVersion + 1));
  }
  absl::StatusOr<std::unique_ptr<RocksDbSessionStore>> s =
      RocksDbSessionStore::Open(dir_ + "/db");
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("layout version 2"));
}

TEST_F(SessionStoreTest, UnwritablePathsFailCleanly) {
  // /proc refuses new directories even to root.
  absl::StatusOr<std::unique_ptr<RocksDbSessionStore>> s =
      RocksDbSessionStore::Open("/proc/sinkserve-store-test/db");
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()),
              HasSubstr("/proc/sinkserve-store-test/db"));
  if (::geteuid() != 0) {
    fs::create_directories(dir_ + "/ro");
    fs::permissions(dir_ + "/ro",
                    fs::perms::owner_read | fs::perms::owner_exec);
    s = RocksDbSessionStore::Open(dir_ + "/ro/db");
    EXPECT_EQ(s.status().code(), absl::StatusCode::kPermissionDenied)
        << s.status();
    fs::permissions(dir_ + "/ro", fs::perms::owner_all);
  }
}

// A tmpfs of `size` at `dir` for the test's lifetime; ok() is false where
// mounting is not allowed (not root, no CAP_SYS_ADMIN).
class TmpfsMount {
 public:
  TmpfsMount(const std::string& dir, const std::string& size) : dir_(dir) {
    fs::create_directories(dir);
    const std::string opts = "size=" + size;
    mounted_ = ::mount("tmpfs", dir.c_str(), "tmpfs", 0, opts.c_str()) == 0;
    if (!mounted_) error_ = std::strerror(errno);
  }
  ~TmpfsMount() {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  bool ok() const { return mounted_; }
  const std::string& error() const { return error_; }
  // Remounts with new flags/options (read-only, another size).
  bool Remount(unsigned long flags, const std::string& size) {
    const std::string opts = "size=" + size;
    return ::mount("tmpfs", dir_.c_str(), "tmpfs", MS_REMOUNT | flags,
                   opts.c_str()) == 0;
  }

 private:
  std::string dir_;
  bool mounted_ = false;
  std::string error_;
};

// A store on a file system mounted read-only: writable open fails with a
// clear error, read-only open serves loads. Needs mount rights (chmod cannot
// make a directory read-only to root, which CI runs as).
TEST_F(SessionStoreTest, ReadOnlyFileSystem) {
  const std::string mnt = dir_ + "/mnt";
  TmpfsMount tmpfs(mnt, "64m");
  if (!tmpfs.ok()) {
    GTEST_SKIP() << "cannot mount a tmpfs here (" << tmpfs.error()
                 << "); chmod alone cannot make a directory read-only to root";
  }
  SessionState s = BigState(11, "ro");
  {
    absl::StatusOr<std::unique_ptr<RocksDbSessionStore>> store =
        RocksDbSessionStore::Open(mnt + "/db");
    ASSERT_TRUE(store.ok()) << store.status();
    ASSERT_TRUE((*store)->Put(s).ok());
  }
  ASSERT_TRUE(tmpfs.Remount(MS_RDONLY, "64m")) << std::strerror(errno);
  absl::StatusOr<std::unique_ptr<RocksDbSessionStore>> rw =
      RocksDbSessionStore::Open(mnt + "/db");
  EXPECT_FALSE(rw.ok());
  EXPECT_EQ(rw.status().code(), absl::StatusCode::kPermissionDenied)
      << rw.status();
  EXPECT_THAT(std::string(rw.status().message()), HasSubstr(mnt));
  RocksDbSessionStoreOptions o;
  o.read_only = true;
  absl::StatusOr<std::unique_ptr<RocksDbSessionStore>> ro =
      RocksDbSessionStore::Open(mnt + "/db", o);
  ASSERT_TRUE(ro.ok()) << ro.status();
  ExpectLoads(**ro, s);
  EXPECT_EQ((*ro)->Put(s).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// Fills the file system holding `path` with a file there; the bytes written.
int64_t FillDisk(const std::string& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return -1;
  int64_t written = 0;
  // Big blocks first, then pages, so no page is left over.
  for (const size_t block : {size_t{1} << 16, size_t{4096}, size_t{1}}) {
    const std::string bytes(block, 'f');
    ssize_t n;
    while ((n = ::write(fd, bytes.data(), bytes.size())) > 0) written += n;
  }
  ::close(fd);
  return written;
}

// Fills a 2 MiB tmpfs: the failing checkpoint reports RESOURCE_EXHAUSTED,
// later ones fail the same way while the disk stays full, and once it has
// room the same store (not reopened) takes checkpoints again; everything
// written before and after loads exactly, also after reopening.
TEST_F(SessionStoreTest, DiskFullOnTmpfs) {
  const std::string mnt = dir_ + "/full";
  TmpfsMount tmpfs(mnt, "2m");
  if (!tmpfs.ok()) {
    GTEST_SKIP() << "cannot mount a tmpfs here (" << tmpfs.error()
                 << "); DiskFullViaFileSizeLimit covers the error path";
  }
  std::vector<SessionState> stored;
  absl::Status failure;
  absl::StatusOr<std::unique_ptr<RocksDbSessionStore>> store =
      RocksDbSessionStore::Open(mnt + "/db");
  ASSERT_TRUE(store.ok()) << store.status();
  std::mt19937_64 rng(3);
  store_testing::RandomStateOptions o;
  o.n_layers = 4;
  o.kv_dim = 128;  // ~200 KB per state
  SessionState failed;
  for (int i = 0; i < 40 && failure.ok(); ++i) {
    SessionState s =
        store_testing::RandomState(rng, "full-" + std::to_string(i), o);
    absl::StatusOr<CheckpointResult> r = (*store)->Put(s);
    if (r.ok()) {
      stored.push_back(std::move(s));
    } else {
      failure = r.status();
      failed = std::move(s);
    }
  }
  ASSERT_FALSE(failure.ok()) << "2 MiB never filled up";
  EXPECT_EQ(failure.code(), absl::StatusCode::kResourceExhausted) << failure;
  EXPECT_THAT(std::string(failure.message()), HasSubstr(mnt));
  // Later writes keep failing cleanly rather than crashing.
  absl::StatusOr<CheckpointResult> again = (*store)->Put(stored.front());
  EXPECT_EQ(again.status().code(), absl::StatusCode::kResourceExhausted)
      << again.status();
  ASSERT_FALSE(stored.empty());

  ASSERT_TRUE(tmpfs.Remount(0, "64m")) << std::strerror(errno);
  absl::StatusOr<CheckpointResult> r = (*store)->Put(failed);
  ASSERT_TRUE(r.ok()) << "the store did not resume once there was room: "
                      << r.status();
  stored.push_back(std::move(failed));
  for (const SessionState& s : stored) ExpectLoads(**store, s);
  store->reset();
  store = RocksDbSessionStore::Open(mnt + "/db");
  ASSERT_TRUE(store.ok()) << store.status();
  for (const SessionState& s : stored) ExpectLoads(**store, s);
  EXPECT_TRUE((*store)->Put(stored.front()).ok());
}

// A disk filled by something else (a filler file on the store's tmpfs):
// full and delta checkpoints fail with RESOURCE_EXHAUSTED while reads go on,
// and once the filler is deleted both kinds succeed on the same store and
// load back exactly, then and after reopening.
TEST_F(SessionStoreTest, DiskFullRecoversWhenSpaceIsFreed) {
  const std::string mnt = dir_ + "/freed";
  TmpfsMount tmpfs(mnt, "16m");
  if (!tmpfs.ok()) {
    GTEST_SKIP() << "cannot mount a tmpfs here (" << tmpfs.error() << ")";
  }
  RocksDbSessionStoreOptions options;
  options.compact_after_deltas = 0;  // only the checkpoints below write
  absl::StatusOr<std::unique_ptr<RocksDbSessionStore>> store =
      RocksDbSessionStore::Open(mnt + "/db", options);
  ASSERT_TRUE(store.ok()) << store.status();
  std::mt19937_64 rng(9);
  store_testing::RandomStateOptions o;
  o.n_layers = 4;
  o.kv_dim = 128;
  std::vector<SessionState> stored;
  for (int i = 0; i < 3; ++i) {
    stored.push_back(
        store_testing::RandomState(rng, "kept-" + std::to_string(i), o));
    ASSERT_TRUE((*store)->Put(stored.back()).ok());
  }
  const store_testing::SimOptions sim;
  SessionState chain = store_testing::SimStateAt("chain", sim, 0);
  absl::StatusOr<CheckpointResult> head = (*store)->Put(chain);
  ASSERT_TRUE(head.ok()) << head.status();

  const std::string filler = mnt + "/filler";
  ASSERT_GT(FillDisk(filler), 0) << std::strerror(errno);
  const SessionState late = store_testing::RandomState(rng, "late", o);
  const SessionState chain_next = store_testing::SimStateAt("chain", sim, 1);
  absl::StatusOr<SessionDelta> delta = Diff(chain, chain_next);
  ASSERT_TRUE(delta.ok()) << delta.status();
  for (int attempt = 0; attempt < 2; ++attempt) {
    absl::StatusOr<CheckpointResult> put = (*store)->Put(late);
    ASSERT_FALSE(put.ok()) << "the filler left room for a checkpoint";
    EXPECT_EQ(put.status().code(), absl::StatusCode::kResourceExhausted)
        << put.status();
    EXPECT_THAT(std::string(put.status().message()), HasSubstr(mnt));
    absl::StatusOr<CheckpointResult> append =
        (*store)->Append("chain", head->version, *delta);
    EXPECT_EQ(append.status().code(), absl::StatusCode::kResourceExhausted)
        << append.status();
  }
  for (const SessionState& s : stored) ExpectLoads(**store, s);
  ExpectLoads(**store, chain);

  ASSERT_TRUE(fs::remove(filler));
  absl::StatusOr<CheckpointResult> put = (*store)->Put(late);
  ASSERT_TRUE(put.ok()) << "the store did not resume once there was room: "
                        << put.status();
  absl::StatusOr<CheckpointResult> append =
      (*store)->Append("chain", head->version, *delta);
  ASSERT_TRUE(append.ok()) << append.status();
  EXPECT_EQ(append->version, head->version + 1);
  stored.push_back(late.Copy());
  stored.push_back(chain_next.Copy());
  for (const SessionState& s : stored) ExpectLoads(**store, s);
  absl::StatusOr<VerifyReport> report = (*store)->Verify();
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(report->bad.empty());

  store->reset();
  store = RocksDbSessionStore::Open(mnt + "/db", options);
  ASSERT_TRUE(store.ok()) << store.status();
  for (const SessionState& s : stored) ExpectLoads(**store, s);
}

// The same without mount rights: a file size limit makes writes fail with
// EFBIG, which is reported as RESOURCE_EXHAUSTED too. RocksDB cannot resume
// from it (only ENOSPC is a recoverable WAL error), so later writes say the
// store needs reopening, and a reopened store has everything and writes.
TEST_F(SessionStoreTest, DiskFullViaFileSizeLimit) {
  std::vector<SessionState> stored;
  absl::Status failure;
  {
    RocksDbSessionStore& store = Open();
    rlimit old;
    ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
    auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
    rlimit small = old;
    small.rlim_cur = 3 << 20;
    ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
    SessionState failed;
    for (int i = 0; i < 10 && failure.ok(); ++i) {
      SessionState s = BigState(300 + i, "fsz-" + std::to_string(i));
      absl::StatusOr<CheckpointResult> r = store.Put(s);
      if (r.ok()) {
        stored.push_back(std::move(s));
      } else {
        failure = r.status();
        failed = std::move(s);
      }
    }
    ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &old), 0);
    ::signal(SIGXFSZ, old_handler);
    ASSERT_FALSE(failure.ok());
    absl::StatusOr<CheckpointResult> r = store.Put(failed);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted)
        << r.status();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("reopen"));
    for (const SessionState& s : stored) ExpectLoads(store, s);
    stored.push_back(std::move(failed));
  }
  EXPECT_EQ(failure.code(), absl::StatusCode::kResourceExhausted) << failure;
  RocksDbSessionStore& store = Open();
  ASSERT_TRUE(store.Put(stored.back()).ok());
  for (const SessionState& s : stored) ExpectLoads(store, s);
  absl::StatusOr<VerifyReport> report = store.Verify();
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->bad.empty());
}

}  // namespace
}  // namespace sinkserve::memory
