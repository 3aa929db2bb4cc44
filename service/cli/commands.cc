// Shared plumbing of the subcommands: argument parsing and error reporting.
#include <iostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "service/cli/commands.h"

namespace sinkserve::cli {

int ParseOrExit(FlagSet& flags, const std::vector<std::string>& args) {
  for (const std::string& arg : args) {
    if (arg == "--help" || arg == "-h") {
      std::cout << flags.Usage();
      return kExitOk;
    }
  }
  if (absl::Status s = flags.Parse(args); !s.ok()) {
    std::cerr << "sinkserve: " << s.message() << "\n";
    return kExitUsage;
  }
  return -1;
}

int Fail(std::string_view command, const absl::Status& status) {
  std::cerr << "sinkserve " << command << ": " << status.message() << "\n";
  return kExitError;
}

}  // namespace sinkserve::cli
