#include "service/security/audit_log.h"

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace sinkserve::service::security {
namespace {

// A JSON string literal of `s`; bytes outside printable ASCII are escaped
// (\u00XX), so the line stays valid whatever a client sent.
void AppendJsonString(std::string* out, std::string_view s) {
  out->push_back('"');
  for (char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out->push_back('\\');
      out->push_back(ch);
    } else if (c < 0x20 || c >= 0x7f) {
      absl::StrAppendFormat(out, "\\u%04x", c);
    } else {
      out->push_back(ch);
    }
  }
  out->push_back('"');
}

void AppendField(std::string* out, const char* key, std::string_view value) {
  if (value.empty()) return;
  absl::StrAppend(out, ",\"", key, "\":");
  AppendJsonString(out, value);
}

}  // namespace

std::string AuditJson(const AuditEvent& event, absl::Time time) {
  std::string out = "{\"time\":";
  AppendJsonString(&out, absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", time, absl::UTCTimeZone()));
  AppendField(&out, "action", event.action);
  AppendField(&out, "tenant", event.tenant);
  AppendField(&out, "credential", event.credential);
  AppendField(&out, "session", event.session);
  AppendField(&out, "owner", event.owner);
  AppendField(&out, "peer", event.peer);
  AppendField(&out, "result", event.result);
  AppendField(&out, "reason", event.reason);
  out.push_back('}');
  return out;
}

absl::StatusOr<std::unique_ptr<AuditLog>> AuditLog::Open(const std::string& path) {
  auto log = std::unique_ptr<AuditLog>(new AuditLog(path));
  if (absl::Status s = log->Reopen(); !s.ok()) return s;
  return log;
}

AuditLog::~AuditLog() {
  if (file_ != nullptr && file_ != stderr) std::fclose(file_);
}

absl::Status AuditLog::Reopen() {
  std::FILE* file = stderr;
  if (path_ != "-") {
    file = std::fopen(path_.c_str(), "a");
    if (file == nullptr) {
      return absl::PermissionDeniedError(
          absl::StrCat("cannot open audit log ", path_, ": ", std::strerror(errno)));
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (file_ != nullptr && file_ != stderr) std::fclose(file_);
  file_ = file;
  return absl::OkStatus();
}

void AuditLog::Record(const AuditEvent& event) {
  std::string line = AuditJson(event, absl::Now());
  line.push_back('\n');
  std::lock_guard<std::mutex> lock(mu_);
  std::fwrite(line.data(), 1, line.size(), file_);
  std::fflush(file_);
}

}  // namespace sinkserve::service::security
