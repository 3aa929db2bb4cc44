// `sinkserve`: one binary, one subcommand per job.
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "service/cli/commands.h"

namespace {

// `bench` has subcommands; plain `bench FLAGS` is the decoder benchmark.
int RunBenchCommand(const std::vector<std::string>& args) {
  if (!args.empty() && args[0] == "stream") {
    return sinkserve::cli::RunBenchStream({args.begin() + 1, args.end()});
  }
  if (!args.empty() && args[0] == "load") {
    return sinkserve::cli::RunBenchLoad({args.begin() + 1, args.end()});
  }
  return sinkserve::cli::RunBench(args);
}

struct Command {
  std::string_view name;
  int (*run)(const std::vector<std::string>&);
  std::string_view help;
};

constexpr Command kCommands[] = {
    {"inspect", sinkserve::cli::RunInspect, "print a GGUF model's architecture and tensors"},
    {"tokenize", sinkserve::cli::RunTokenize, "print the token ids of a text"},
    {"generate", sinkserve::cli::RunGenerate, "continue a prompt on the CPU (streams text)"},
    {"perplexity", sinkserve::cli::RunPerplexity,
     "perplexity of a text file under a KV cache policy"},
    {"eval", sinkserve::cli::RunEval, "evaluations (eval recall: key-fact probe)"},
    {"sessions", sinkserve::cli::RunSessions,
     "list | show | delete | verify | export | import stored sessions"},
    {"serve", sinkserve::cli::RunServe, "run the gRPC chat service"},
    {"chat", sinkserve::cli::RunChat, "chat with a running server"},
    {"keys", sinkserve::cli::RunKeys, "keys new: make an API key for serve --api-keys"},
    {"bench", RunBenchCommand,
     "measure speed: prefill/decode (default), `bench stream`, `bench load`"},
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
