#include "memory/rados_testing.h"

namespace sinkserve::memory::rados_testing {

ClusterEnvironment* TestCluster() {
  static ClusterEnvironment* const cluster = static_cast<ClusterEnvironment*>(
      ::testing::AddGlobalTestEnvironment(new ClusterEnvironment));
  return cluster;
}

}  // namespace sinkserve::memory::rados_testing
