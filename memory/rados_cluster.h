// The librados connection a RadosSessionStore holds, shared with the
// RadosLeases on top of it. Internal to memory/: keeps librados.hpp out of
// the public headers.
#ifndef SINKSERVE_MEMORY_RADOS_CLUSTER_H_
#define SINKSERVE_MEMORY_RADOS_CLUSTER_H_

#include <rados/librados.hpp>

#include "memory/rados_session_store.h"

namespace sinkserve::memory {

struct RadosSessionStore::Cluster {
  // Destroyed in reverse: the pool context before the cluster handle, whose
  // destructor shuts librados down (exactly once).
  librados::Rados rados;
  librados::IoCtx io;
};

}  // namespace sinkserve::memory

#endif  // SINKSERVE_MEMORY_RADOS_CLUSTER_H_
