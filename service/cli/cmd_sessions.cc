// `sinkserve sessions`: inspection and maintenance of a session store.
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "memory/rocksdb_session_store.h"
#include "memory/session_store.h"
#include "service/cli/commands.h"

namespace sinkserve::cli {
namespace {

constexpr char kSynopsis[] =
    "--db DIR list | show ID | delete ID | verify | export ID FILE | import FILE\n"
    "  list             every session: id, policy, cells, rounds, version, updated\n"
    "                   (unreadable ones too, marked BAD; exit code 1 if any)\n"
    "  show ID          one session in full (reads and checks all its records)\n"
    "  delete ID        removes the session\n"
    "  verify           checks every checksum of every session; reports each bad\n"
    "                   session and goes on; exit code 1 if any is bad\n"
    "  export ID FILE   writes the session to one portable file (ID '*': all)\n"
    "  import FILE      stores the sessions of an export file (--overwrite to\n"
    "                   replace existing ones); creates DIR if missing\n"
    "The store must exist except for import; list, show, verify and export open it\n"
    "read-only, so they work on a read-only copy too.";

int FailCode(const absl::Status& status) {
  std::cerr << "sinkserve sessions: " << absl::StatusCodeToString(status.code()) << ": "
            << status.message() << "\n";
  return kExitError;
}

std::string Time(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", t, absl::UTCTimeZone());
}

std::string Shape(const memory::KvShape& s) {
  return absl::StrCat(s.dtype, " x ", s.n_layers, " layers x kv_dim ", s.kv_dim);
}

int List(const memory::SessionStore& store) {
  memory::ListOptions options;
  options.max_sessions = 1000;
  std::cout << absl::StrFormat("%-24s %-28s %8s %10s %7s %7s %8s  %s\n", "ID", "POLICY", "CELLS",
                               "TOKENS", "ROUNDS", "VERSION", "DELTAS", "UPDATED");
  int64_t sessions = 0, bad = 0;
  do {
    auto page = store.List(options);
    if (!page.ok()) return FailCode(page.status());
    for (const memory::SessionInfo& i : page->sessions) {
      std::cout << absl::StrFormat("%-24s %-28s %8d %10d %7d %7d %8d  %s\n", i.id, i.policy,
                                   i.cells, i.tokens_seen, i.rounds, i.version, i.deltas,
                                   Time(i.updated_at));
      ++sessions;
    }
    for (const memory::BadSession& b : page->bad) {
      std::cout << absl::StrFormat("%-24s BAD %s: %s\n", b.id,
                                   absl::StatusCodeToString(b.status.code()),
                                   b.status.message());
      ++bad;
    }
    options.start_after = page->next_start_after;
  } while (!options.start_after.empty());
  std::cerr << sessions << " sessions" << (bad > 0 ? absl::StrCat(", ", bad, " unreadable") : "")
            << "\n";
  return bad > 0 ? kExitError : kExitOk;
}

int Show(const memory::SessionStore& store, const std::string& id) {
  auto info = store.Info(id);
  if (!info.ok()) return FailCode(info.status());
  // Reads every record, so a damaged session shows as DATA_LOSS here.
  auto loaded = store.Load(id, memory::SessionStore::kAnyModel);
  if (!loaded.ok()) return FailCode(loaded.status());
  const memory::SessionState& s = loaded->state;
  std::cout << "id:               " << s.id << "\n"
            << "model:            " << s.model_fingerprint << "\n"
            << "policy:           " << s.policy.ToString() << "\n"
            << "capacity:         " << s.capacity << " slots\n"
            << "kv:               " << Shape(s.kv_shape) << ", " << s.kv.size() << " bytes\n"
            << "cells:            " << s.cache.cells.size() << "\n"
            << "tokens seen:      " << s.cache.tokens_seen << "\n"
            << "evicted:          " << s.cache.evicted_total << "\n"
            << "pending tokens:   " << s.pending.size();
  for (const memory::PendingToken& p : s.pending) std::cout << " " << p.token;
  std::cout << "\n"
            << "rounds:           " << s.rounds << "\n"
            << "turns:            " << s.turns << "\n"
            << "history length:   " << s.history_length << "\n"
            << "created:          " << Time(s.created_at) << "\n"
            << "updated:          " << Time(s.updated_at) << "\n"
            << "version:          " << loaded->version << "\n"
            << "records:          " << loaded->records << " (" << info->deltas
            << " deltas on the last full record), " << loaded->bytes_read << " bytes\n";
  std::vector<int32_t> first;
  for (size_t i = 0; i < s.cache.cells.size() && i < 16; ++i) {
    first.push_back(s.cache.cells[i].token);
  }
  std::cout << "first tokens:     " << absl::StrJoin(first, " ") << "\n";
  return kExitOk;
}

int Verify(const memory::SessionStore& store) {
  auto report = store.Verify();
  if (!report.ok()) return FailCode(report.status());
  for (const memory::BadSession& b : report->bad) {
    std::cout << "BAD " << b.id << ": " << absl::StatusCodeToString(b.status.code()) << ": "
              << b.status.message() << "\n";
  }
  std::cout << report->sessions_checked << " sessions checked, " << report->bad.size()
            << " bad\n";
  return report->bad.empty() ? kExitOk : kExitError;
}

}  // namespace

int RunSessions(const std::vector<std::string>& args) {
  std::vector<FlagSpec> specs = {
      {"db", FlagKind::kString, "", "session store directory"},
      {"overwrite", FlagKind::kBool, "false", "import: replace sessions that already exist"}};
  FlagSet flags("sessions", kSynopsis, std::move(specs));
  if (int rc = ParseOrExit(flags, args); rc >= 0) return rc;
  const std::vector<std::string>& pos = flags.positional();
  auto usage = [](const std::string& message) {
    std::cerr << "sinkserve sessions: " << message << " (see --help)\n";
    return kExitUsage;
  };
  if (!flags.Has("db")) return usage("--db is required");
  if (pos.empty()) return usage("give an action: list, show, delete, verify, export or import");
  const std::string& action = pos[0];
  struct Arity {
    const char* action;
    size_t args;
    bool writes;
  };
  static constexpr Arity kActions[] = {{"list", 0, false},   {"show", 1, false},
                                       {"delete", 1, true},  {"verify", 0, false},
                                       {"export", 2, false}, {"import", 1, true}};
  const Arity* arity = nullptr;
  for (const Arity& a : kActions) {
    if (action == a.action) arity = &a;
  }
  if (arity == nullptr) return usage(absl::StrCat("unknown action '", action, "'"));
  if (pos.size() != arity->args + 1) {
    return usage(absl::StrCat(action, " takes ", arity->args, " argument(s), got ",
                              pos.size() - 1));
  }

  memory::RocksDbSessionStoreOptions options;
  options.create_if_missing = action == "import";
  options.read_only = !arity->writes;
  options.background_compaction = false;
  auto store = memory::RocksDbSessionStore::Open(flags.GetString("db"), options);
  if (!store.ok()) return FailCode(store.status());
  memory::SessionStore& s = **store;

  if (action == "list") return List(s);
  if (action == "show") return Show(s, pos[1]);
  if (action == "verify") return Verify(s);
  if (action == "delete") {
    if (absl::Status st = s.Delete(pos[1]); !st.ok()) return FailCode(st);
    std::cerr << "deleted session " << pos[1] << "\n";
    return kExitOk;
  }
  if (action == "export") {
    std::vector<std::string> ids;
    if (pos[1] != "*") ids.push_back(pos[1]);
    auto result = s.Export(pos[2], ids);
    if (!result.ok()) return FailCode(result.status());
    std::cerr << "exported " << result->sessions << " session(s), " << result->bytes
              << " bytes, to " << pos[2] << "\n";
    return kExitOk;
  }
  memory::ImportOptions import;
  import.overwrite = flags.GetBool("overwrite");
  auto result = s.Import(pos[1], import);
  if (!result.ok()) return FailCode(result.status());
  std::cerr << "imported " << result->sessions << " session(s) from " << pos[1] << "\n";
  return kExitOk;
}

}  // namespace sinkserve::cli
