// absl::Status <-> grpc::Status: the one place where engine/memory errors
// become the codes a gRPC client acts on (DESIGN.md: map only in service/).
#ifndef SINKSERVE_SERVICE_SERVER_STATUS_UTIL_H_
#define SINKSERVE_SERVICE_SERVER_STATUS_UTIL_H_

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace sinkserve::service {

// Same code (absl and gRPC share the numbering), same message.
inline grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

inline absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

// A session that does not exist, and one the caller may not see (another
// tenant's): the same words, so that a refusal confirms nothing.
inline absl::Status NoSessionError(std::string_view id) {
  return absl::NotFoundError(std::string("no session ").append(id));
}

// Every refused credential gets this: no hint of what was wrong.
inline grpc::Status Unauthenticated() {
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "missing or invalid credentials");
}

// "NOT_FOUND" etc., for the errors-by-code metric.
inline std::string StatusCodeName(absl::StatusCode code) {
  std::string name = absl::StatusCodeToString(code);
  return name.empty() ? "UNKNOWN" : name;
}

}  // namespace sinkserve::service

#endif  // SINKSERVE_SERVICE_SERVER_STATUS_UTIL_H_
