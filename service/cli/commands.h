// Entry points of the `sinkserve` subcommands. Each takes the arguments after
// the subcommand name and returns the process exit code (see flags.h).
#ifndef SINKSERVE_SERVICE_CLI_COMMANDS_H_
#define SINKSERVE_SERVICE_CLI_COMMANDS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "service/cli/flags.h"

namespace sinkserve::cli {

int RunTokenize(const std::vector<std::string>& args);
int RunInspect(const std::vector<std::string>& args);
int RunGenerate(const std::vector<std::string>& args);
int RunBench(const std::vector<std::string>& args);
int RunBenchStream(const std::vector<std::string>& args);  // bench stream
int RunBenchLoad(const std::vector<std::string>& args);    // bench load
int RunPerplexity(const std::vector<std::string>& args);
int RunEval(const std::vector<std::string>& args);
int RunSessions(const std::vector<std::string>& args);
int RunServe(const std::vector<std::string>& args);
int RunChat(const std::vector<std::string>& args);
int RunKeys(const std::vector<std::string>& args);  // keys new

// Parses `args` into `flags`; on --help prints usage and returns kExitOk, on a
// bad argument prints one line and returns kExitUsage; -1 means "go on".
int ParseOrExit(FlagSet& flags, const std::vector<std::string>& args);

// Prints "sinkserve <command>: <message>" on stderr and returns kExitError.
int Fail(std::string_view command, const absl::Status& status);

}  // namespace sinkserve::cli

#endif  // SINKSERVE_SERVICE_CLI_COMMANDS_H_
