// PLACEHOLDER: being written this session; replaced by the real command.
#include <iostream>

#include "service/cli/commands.h"

namespace sinkserve::cli {

int RunServe(const std::vector<std::string>& args) {
  std::cerr << "sinkserve: this command is not built yet\n";
  return kExitError;
}

}  // namespace sinkserve::cli
