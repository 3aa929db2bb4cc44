// The audit log: one JSON object per line for every session creation and
// deletion, every refused credential and every admin action across tenants.
// It names who, what, which session, from where and the outcome; never any
// conversation text, never a credential's secret.
#ifndef SINKSERVE_SERVICE_SECURITY_AUDIT_LOG_H_
#define SINKSERVE_SERVICE_SECURITY_AUDIT_LOG_H_

#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace sinkserve::service::security {

struct AuditEvent {
  // "session.create", "session.delete", "auth.failure", "admin.list",
  // "admin.get", "admin.delete".
  std::string action;
  std::string tenant;      // the caller's tenant ("" when unauthenticated)
  std::string credential;  // API key name / JWT subject ("" when none)
  std::string session;     // the session's id as the caller named it
  std::string owner;       // the session's tenant, when not the caller's
  std::string peer;        // grpc::ServerContext::peer()
  std::string result;      // "OK" or a status code name
  std::string reason;      // why a credential was refused, for operators
};

// One line: {"time":"...","action":...} with the empty fields left out.
std::string AuditJson(const AuditEvent& event, absl::Time time);

class AuditLog {
 public:
  // Appends to `path` ("-" = stderr). The file is opened in append mode and
  // every line is flushed as written, so a crash loses no record.
  static absl::StatusOr<std::unique_ptr<AuditLog>> Open(const std::string& path);
  ~AuditLog();

  void Record(const AuditEvent& event);
  // Reopens the file (after logrotate moved it; SIGHUP).
  absl::Status Reopen();

 private:
  explicit AuditLog(std::string path) : path_(std::move(path)) {}

  const std::string path_;
  std::mutex mu_;
  std::FILE* file_ = nullptr;  // guarded by mu_
};

}  // namespace sinkserve::service::security

#endif  // SINKSERVE_SERVICE_SECURITY_AUDIT_LOG_H_
