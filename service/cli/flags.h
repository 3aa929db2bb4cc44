// Command-line flags for the `sinkserve` subcommands.
//
// Each subcommand declares exactly the flags it takes, so a flag that belongs to
// another subcommand is an error, not silently ignored, and every bad argument
// exits with code 2 (Abseil's global flags exit 1 and accept any subcommand's
// flags). `--flagfile=PATH` reads more flags from a file, one per line.
#ifndef SINKSERVE_SERVICE_CLI_FLAGS_H_
#define SINKSERVE_SERVICE_CLI_FLAGS_H_

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sinkserve::cli {

enum class FlagKind { kString, kInt, kDouble, kBool, kIntList };

struct FlagSpec {
  std::string name;           // without dashes
  FlagKind kind;
  std::string default_value;  // text; "" = unset
  std::string help;
};

class FlagSet {
 public:
  FlagSet(std::string command, std::string synopsis, std::vector<FlagSpec> specs);

  // Parses args (without the program and subcommand names). Positional
  // arguments are collected in order. Errors are INVALID_ARGUMENT.
  absl::Status Parse(const std::vector<std::string>& args);

  bool Has(absl::string_view name) const;  // given on the command line
  std::string GetString(absl::string_view name) const;
  int64_t GetInt(absl::string_view name) const;
  double GetDouble(absl::string_view name) const;
  bool GetBool(absl::string_view name) const;
  std::vector<int64_t> GetIntList(absl::string_view name) const;
  const std::vector<std::string>& positional() const { return positional_; }

  std::string Usage() const;

 private:
  const FlagSpec* Find(absl::string_view name) const;
  absl::Status Set(const FlagSpec& spec, absl::string_view value);
  absl::Status ParseFile(const std::string& path, int depth);
  absl::Status ParseArgs(const std::vector<std::string>& args, int depth);

  std::string command_;
  std::string synopsis_;
  std::vector<FlagSpec> specs_;
  std::map<std::string, std::string, std::less<>> values_;  // given values
  std::vector<std::string> positional_;
};

// Exit codes every subcommand uses.
inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;
inline constexpr int kExitUsage = 2;

}  // namespace sinkserve::cli

#endif  // SINKSERVE_SERVICE_CLI_FLAGS_H_
