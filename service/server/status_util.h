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

// "NOT_FOUND" etc., for the errors-by-code metric.
inline std::string StatusCodeName(absl::StatusCode code) {
  std::string name = absl::StatusCodeToString(code);
  return name.empty() ? "UNKNOWN" : name;
}

}  // namespace sinkserve::service

#endif  // SINKSERVE_SERVICE_SERVER_STATUS_UTIL_H_
