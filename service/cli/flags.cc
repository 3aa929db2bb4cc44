#include "service/cli/flags.h"

#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/strings/string_view.h"

namespace sinkserve::cli {
namespace {

constexpr int kMaxFlagfileDepth = 8;


absl::Status CheckValue(const FlagSpec& spec, absl::string_view value) {
  bool ok = true;
  switch (spec.kind) {
    case FlagKind::kString:
      break;
    case FlagKind::kInt: {
      int64_t v;
      ok = absl::SimpleAtoi(value, &v);
      break;
    }
    case FlagKind::kDouble: {
      double v;
      ok = absl::SimpleAtod(value, &v);
      break;
    }
    case FlagKind::kBool:
      ok = value == "true" || value == "false" || value == "1" || value == "0";
      break;
    case FlagKind::kIntList:
      for (absl::string_view part : absl::StrSplit(value, ',')) {
        int64_t v;
        if (!absl::SimpleAtoi(part, &v)) ok = false;
      }
      break;
  }
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", spec.name, ": bad value '", value, "'"));
  }
  return absl::OkStatus();
}

}  // namespace

FlagSet::FlagSet(std::string command, std::string synopsis, std::vector<FlagSpec> specs)
    : command_(std::move(command)), synopsis_(std::move(synopsis)), specs_(std::move(specs)) {}

const FlagSpec* FlagSet::Find(absl::string_view name) const {
  for (const FlagSpec& spec : specs_) {
    if (spec.name == name) return &spec;
  }
  return nullptr;
}

absl::Status FlagSet::Set(const FlagSpec& spec, absl::string_view value) {
  if (absl::Status s = CheckValue(spec, value); !s.ok()) return s;
  values_[spec.name] = std::string(value);
  return absl::OkStatus();
}

absl::Status FlagSet::Parse(const std::vector<std::string>& args) {
  return ParseArgs(args, 0);
}

absl::Status FlagSet::ParseArgs(const std::vector<std::string>& args, int depth) {
  for (size_t i = 0; i < args.size(); ++i) {
    absl::string_view arg = args[i];
    if (arg == "--") {
      positional_.insert(positional_.end(), args.begin() + i + 1, args.end());
      break;
    }
    if (!absl::ConsumePrefix(&arg, "--")) {
      if (arg.size() > 1 && arg[0] == '-') {
        return absl::InvalidArgumentError(absl::StrCat(
            command_, ": flags take two dashes: '", args[i], "'"));
      }
      positional_.push_back(args[i]);
      continue;
    }
    absl::string_view name = arg;
    absl::string_view value;
    bool has_value = false;
    if (size_t eq = arg.find('='); eq != absl::string_view::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
      has_value = true;
    }
    if (name == "flagfile") {
      if (!has_value) {
        if (i + 1 >= args.size()) return absl::InvalidArgumentError("--flagfile needs a path");
        value = args[++i];
      }
      if (absl::Status s = ParseFile(std::string(value), depth + 1); !s.ok()) return s;
      continue;
    }
    const FlagSpec* spec = Find(name);
    bool negated = false;
    if (spec == nullptr && absl::StartsWith(name, "no")) {
      spec = Find(name.substr(2));
      negated = spec != nullptr && spec->kind == FlagKind::kBool && !has_value;
      if (!negated) spec = nullptr;
    }
    if (spec == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          command_, ": unknown flag --", name, " (see 'sinkserve ", command_, " --help')"));
    }
    if (spec->kind == FlagKind::kBool && !has_value) {
      value = negated ? "false" : "true";
    } else if (!has_value) {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
      }
      value = args[++i];
    }
    if (absl::Status s = Set(*spec, value); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status FlagSet::ParseFile(const std::string& path, int depth) {
  if (depth > kMaxFlagfileDepth) {
    return absl::InvalidArgumentError(absl::StrCat("--flagfile nested too deep at ", path));
  }
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read flagfile ", path));
  std::vector<std::string> args;
  std::string line;
  while (std::getline(in, line)) {
    absl::string_view text = absl::StripAsciiWhitespace(line);
    if (text.empty() || text[0] == '#') continue;
    args.emplace_back(text);
  }
  return ParseArgs(args, depth);
}

bool FlagSet::Has(absl::string_view name) const { return values_.count(name) > 0; }

std::string FlagSet::GetString(absl::string_view name) const {
  if (auto it = values_.find(name); it != values_.end()) return it->second;
  const FlagSpec* spec = Find(name);
  return spec ? spec->default_value : "";
}

int64_t FlagSet::GetInt(absl::string_view name) const {
  int64_t v = 0;
  (void)absl::SimpleAtoi(GetString(name), &v);
  return v;
}

double FlagSet::GetDouble(absl::string_view name) const {
  double v = 0;
  (void)absl::SimpleAtod(GetString(name), &v);
  return v;
}

bool FlagSet::GetBool(absl::string_view name) const {
  std::string v = GetString(name);
  return v == "true" || v == "1";
}

std::vector<int64_t> FlagSet::GetIntList(absl::string_view name) const {
  std::vector<int64_t> out;
  std::string text = GetString(name);
  if (text.empty()) return out;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    int64_t v = 0;
    (void)absl::SimpleAtoi(part, &v);
    out.push_back(v);
  }
  return out;
}

std::string FlagSet::Usage() const {
  std::ostringstream out;
  out << "usage: sinkserve " << command_ << " " << synopsis_ << "\n";
  for (const FlagSpec& spec : specs_) {
    out << "  --" << spec.name;
    if (spec.kind != FlagKind::kBool) out << " VALUE";
    out << "\t" << spec.help;
    if (!spec.default_value.empty()) out << " (default " << spec.default_value << ")";
    out << "\n";
  }
  out << "  --flagfile PATH\tread more flags from PATH, one per line\n";
  return out.str();
}

}  // namespace sinkserve::cli
