// One-line server logs on stderr ("sinkserve serve: ..."), whole lines even
// from many threads. Abseil 20220623 has no absl/log.
#ifndef SINKSERVE_SERVICE_SERVER_LOG_H_
#define SINKSERVE_SERVICE_SERVER_LOG_H_

#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace sinkserve::service {

template <typename... Args>
void ServerLog(const Args&... args) {
  const std::string line =
      absl::StrCat(absl::FormatTime("%H:%M:%E3S", absl::Now(), absl::UTCTimeZone()),
                   " sinkserve serve: ", args..., "\n");
  std::fwrite(line.data(), 1, line.size(), stderr);  // one write: lines never interleave
  std::fflush(stderr);
}

}  // namespace sinkserve::service

#endif  // SINKSERVE_SERVICE_SERVER_LOG_H_
