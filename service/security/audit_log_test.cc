#include "service/security/audit_log.h"

#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace sinkserve::service::security {
namespace {

TEST(AuditLogTest, OneJsonObjectWithoutEmptyFields) {
  AuditEvent e;
  e.action = "session.create";
  e.tenant = "acme";
  e.session = "s\"1\\\x01";
  e.peer = "ipv4:127.0.0.1:4242";
  e.result = "OK";
  EXPECT_EQ(AuditJson(e, absl::FromUnixMillis(1764892800123)),
            "{\"time\":\"2025-12-05T00:00:00.123Z\",\"action\":\"session.create\","
            "\"tenant\":\"acme\",\"session\":\"s\\\"1\\\\\\u0001\","
            "\"peer\":\"ipv4:127.0.0.1:4242\",\"result\":\"OK\"}");
}

TEST(AuditLogTest, AppendsLinesAndReopens) {
  const std::string path = ::testing::TempDir() + "/audit_" + std::to_string(::getpid());
  std::remove(path.c_str());
  absl::StatusOr<std::unique_ptr<AuditLog>> log = AuditLog::Open(path);
  ASSERT_TRUE(log.ok()) << log.status();
  AuditEvent e;
  e.action = "auth.failure";
  e.reason = "unknown API key";
  (*log)->Record(e);
  // As logrotate does: move the file away, then ask for a new one.
  ASSERT_EQ(std::rename(path.c_str(), (path + ".1").c_str()), 0);
  ASSERT_TRUE((*log)->Reopen().ok());
  e.action = "session.delete";
  (*log)->Record(e);
  auto read = [](const std::string& p) {
    std::ifstream in(p);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  };
  const std::string rotated = read(path + ".1");
  const std::string fresh = read(path);
  EXPECT_NE(rotated.find("\"action\":\"auth.failure\""), std::string::npos) << rotated;
  EXPECT_EQ(rotated.find("session.delete"), std::string::npos);
  EXPECT_NE(fresh.find("\"action\":\"session.delete\""), std::string::npos) << fresh;
  EXPECT_EQ(fresh.back(), '\n');
  std::remove(path.c_str());
  std::remove((path + ".1").c_str());
}

TEST(AuditLogTest, UnwritablePathIsAnError) {
  EXPECT_FALSE(AuditLog::Open("/nonexistent/dir/audit.log").ok());
}

}  // namespace
}  // namespace sinkserve::service::security
