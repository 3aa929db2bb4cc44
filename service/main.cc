// `sinkserve`: one binary, one subcommand per job.
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "service/cli/commands.h"

namespace {

struct Command {
  std::string_view name;
  int (*run)(const std::vector<std::string>&);
  std::string_view help;
};

constexpr Command kCommands[] = {
    {"inspect", sinkserve::cli::RunInspect, "print a GGUF model's architecture and tensors"},
    {"tokenize", sinkserve::cli::RunTokenize, "print the token ids of a text"},
    {"generate", sinkserve::cli::RunGenerate, "continue a prompt on the CPU (streams text)"},
    {"bench", sinkserve::cli::RunBench, "measure prefill/decode speed and memory bandwidth"},
};

int Usage(std::ostream& out) {
  out << "usage: sinkserve COMMAND [flags]   (sinkserve COMMAND --help for its flags)\n";
  for (const Command& c : kCommands) out << "  " << c.name << "\t" << c.help << "\n";
  return sinkserve::cli::kExitUsage;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return Usage(std::cerr);
  std::string_view name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") {
    Usage(std::cout);
    return sinkserve::cli::kExitOk;
  }
  std::vector<std::string> args(argv + 2, argv + argc);
  for (const Command& c : kCommands) {
    if (c.name == name) return c.run(args);
  }
  std::cerr << "sinkserve: unknown command '" << name << "'\n";
  return Usage(std::cerr);
}
