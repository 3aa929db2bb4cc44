#include "memory/session_leases.h"

#include "absl/strings/cord.h"

namespace sinkserve::memory {
namespace {
constexpr char kFencedPayload[] = "type.sinkserve.dev/fenced";
}  // namespace

const char* AcquireCauseName(AcquireCause cause) {
  switch (cause) {
    case AcquireCause::kHeld:
      return "held";
    case AcquireCause::kFree:
      return "free";
    case AcquireCause::kHandedOff:
      return "handed_off";
    case AcquireCause::kOwnerGone:
      return "owner_gone";
    case AcquireCause::kExpired:
      return "expired";
  }
  return "unknown";
}

absl::Status FencedError(std::string_view message) {
  absl::Status status = absl::FailedPreconditionError(absl::string_view(message.data(), message.size()));
  status.SetPayload(kFencedPayload, absl::Cord("1"));
  return status;
}

bool IsFenced(const absl::Status& status) {
  return absl::IsFailedPrecondition(status) && status.GetPayload(kFencedPayload).has_value();
}

}  // namespace sinkserve::memory
