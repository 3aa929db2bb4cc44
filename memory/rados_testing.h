// Test support for programs that run against a real throwaway Ceph cluster
// (scripts/cluster: one mon, three memstore OSDs as processes), started once
// per program and stopped by the pids it started.
#ifndef SINKSERVE_MEMORY_RADOS_TESTING_H_
#define SINKSERVE_MEMORY_RADOS_TESTING_H_

#include <rados/librados.hpp>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "memory/rados_session_store.h"

#ifndef SINKSERVE_SOURCE_DIR
#define SINKSERVE_SOURCE_DIR "."
#endif

namespace sinkserve::memory::rados_testing {

namespace fs = std::filesystem;

inline std::string Run(const std::string& command, int* rc) {
  std::string out;
  FILE* p = ::popen(command.c_str(), "r");
  if (p == nullptr) {
    *rc = -1;
    return out;
  }
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  *rc = ::pclose(p);
  return out;
}

// scripts/cluster: from $SINKSERVE_CLUSTER, the runfiles (Bazel) or the
// source tree (CMake).
inline std::string ClusterScript() {
  if (const char* env = std::getenv("SINKSERVE_CLUSTER")) return env;
  if (fs::exists("scripts/cluster")) return fs::absolute("scripts/cluster");
  return std::string(SINKSERVE_SOURCE_DIR) + "/scripts/cluster";
}

// The cluster of this test program.
class ClusterEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    if (Run("command -v ceph-mon ceph-osd ceph rados >/dev/null 2>&1", &rc_),
        rc_ != 0) {
      skip_ = "the Ceph binaries (ceph-mon, ceph-osd, ceph-common) are not "
              "installed: run scripts/setup";
      return;
    }
    // Under /tmp, not TEST_TMPDIR: the daemons' admin sockets live in it,
    // and a Unix socket path has at most 107 bytes.
    std::string tmpl = "/tmp/rados_test.XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) std::abort();
    dir_ = tmpl;
    const std::string out = Run(
        absl::StrCat(ClusterScript(), " start ", dir_, " --osds 3 2>&1"), &rc_);
    if (rc_ != 0) {
      failed_ = absl::StrCat("scripts/cluster start failed: ", out);
      return;
    }
    conf_ = dir_ + "/ceph.conf";
    std::fprintf(stderr, "%s", out.c_str());
  }
  void TearDown() override {
    if (!dir_.empty()) {
      int rc = 0;
      Run(absl::StrCat(ClusterScript(), " stop ", dir_, " 2>&1"), &rc);
      std::error_code ec;
      fs::remove_all(dir_, ec);
    }
  }
  // Why tests cannot run: no Ceph here (skip), or the cluster did not
  // start (fail).
  const std::string& skip() const { return skip_; }
  const std::string& failed() const { return failed_; }
  bool Cluster(const std::string& args) {
    int rc = 0;
    const std::string out =
        Run(absl::StrCat(ClusterScript(), " ", args, " 2>&1"), &rc);
    EXPECT_EQ(rc, 0) << args << ": " << out;
    return rc == 0;
  }
  const std::string& conf() const { return conf_; }
  const std::string& dir() const { return dir_; }

 private:
  int rc_ = 0;
  std::string dir_, conf_, skip_, failed_;
};

// The program's cluster, registered as a gtest environment (one per
// program: a cluster takes seconds to start).
ClusterEnvironment* TestCluster();

#define REQUIRE_CLUSTER()                                                    \
  do {                                                                       \
    auto* c = ::sinkserve::memory::rados_testing::TestCluster();             \
    if (!c->skip().empty()) GTEST_SKIP() << c->skip();                       \
    ASSERT_TRUE(c->failed().empty()) << c->failed();                         \
  } while (0)

inline std::string RandomNamespace(const std::string& prefix) {
  std::random_device rd;
  return absl::StrCat(prefix, "-", rd(), rd());
}

// Raw librados access to the pool, to damage objects like a buggy tool.
class RawPool {
 public:
  explicit RawPool(const std::string& ns) {
    EXPECT_EQ(rados_.init("admin"), 0);
    EXPECT_EQ(rados_.conf_read_file(TestCluster()->conf().c_str()), 0);
    rados_.conf_set("rados_osd_op_timeout", "30");
    EXPECT_EQ(rados_.connect(), 0);
    EXPECT_EQ(rados_.ioctx_create("sessions", io_), 0);
    io_.set_namespace(ns);
  }
  // The record object (part 0) of `seq` of session `id`, from its record map.
  std::string RecordObject(const std::string& id, uint64_t seq) {
    std::map<std::string, librados::bufferlist> refs;
    EXPECT_EQ(io_.omap_get_vals(RadosSessionStore::MetaObject(id), "", 1000,
                                &refs),
              0);
    char key[17];
    std::snprintf(key, sizeof(key), "%016llx",
                  static_cast<unsigned long long>(seq));
    auto it = refs.find(key);
    EXPECT_NE(it, refs.end()) << "no record " << seq << " of " << id;
    if (it == refs.end()) return "";
    const std::string ref = it->second.to_str();
    return RadosSessionStore::RecordObject(id, ref.substr(0, ref.find(':')), 0);
  }
  void FlipByte(const std::string& oid) {
    librados::bufferlist bl;
    ASSERT_GT(io_.read(oid, bl, 0, 0), 0) << oid;
    std::string v = bl.to_str();
    v[v.size() / 2] ^= 0x10;
    librados::bufferlist out;
    out.append(v);
    ASSERT_EQ(io_.write_full(oid, out), 0);
  }
  librados::IoCtx& io() { return io_; }

 private:
  librados::Rados rados_;
  librados::IoCtx io_;
};

inline RadosSessionStoreOptions OptionsFor(const std::string& ns) {
  RadosSessionStoreOptions o;
  o.conf_path = TestCluster()->conf();
  o.rados_namespace = ns;
  o.op_timeout = absl::Seconds(20);
  return o;
}

}  // namespace sinkserve::memory::rados_testing

#endif  // SINKSERVE_MEMORY_RADOS_TESTING_H_
