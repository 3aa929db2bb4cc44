// PendingRows: K/V rows of a checkpoint still being copied off an
// accelerator, so the thread that captured them can go on decoding.
#ifndef SINKSERVE_MEMORY_PENDING_ROWS_H_
#define SINKSERVE_MEMORY_PENDING_ROWS_H_

#include <string>

#include "absl/status/status.h"

namespace sinkserve::memory {

// Wait() blocks until the rows are on the host and moves them, in
// ExportSlots' layout, into *out. Called once, from any one thread (a
// checkpoint writer); the rows are those of the moment they were captured,
// whatever the storage did since.
class PendingRows {
 public:
  virtual ~PendingRows() = default;
  virtual absl::Status Wait(std::string* out) = 0;
};

}  // namespace sinkserve::memory

#endif  // SINKSERVE_MEMORY_PENDING_ROWS_H_
