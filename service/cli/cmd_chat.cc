// `sinkserve chat`: a terminal client of a running `sinkserve serve`.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "memory/cache_policy.h"
#include "service/cli/commands.h"
#include "service/cli/security_flags.h"
#include "service/server/chat_client.h"

namespace sinkserve::cli {
namespace {

constexpr char kSynopsis[] =
    "--server ADDR --session ID [--create] [--message TEXT] [--max-tokens N]\n"
    "Attaches to session ID (with --create, creates it when missing) and sends\n"
    "--message as one turn, or, without it, every line of stdin as a turn\n"
    "(interactive when stdin is a terminal). Tokens are printed as they stream\n"
    "in; per-turn statistics go to stderr. Exit 1 with the gRPC status on error.\n"
    "With --message the turn is sent exactly once across failures: it carries a\n"
    "turn id (--turn-id, else a random one) and, when the server is unreachable\n"
    "or the stream breaks (UNAVAILABLE), chat reconnects and sends it again with\n"
    "the same id, up to --retries times with growing waits; a turn that had\n"
    "completed comes back from the server's record instead of running twice.\n"
    "Pinning: --pin keeps the turns' text in the session's cache until unpinned\n"
    "(each pinned turn gets a turn id, printed to stderr); in a session typed on\n"
    "stdin, `/pin TEXT` sends a pinned turn and `/unpin TURN_ID` lets one go. A\n"
    "created session's system prompt is pinned unless --pin-system-prompt=false;\n"
    "--policy 'streaming(4,252,pinned=64)' caps its pinned cells.";

std::string_view StopName(v1::StopReason reason) {
  switch (reason) {
    case v1::STOP_REASON_EOS:
      return "eos";
    case v1::STOP_REASON_STOP_STRING:
      return "stop string";
    case v1::STOP_REASON_MAX_TOKENS:
      return "max tokens";
    case v1::STOP_REASON_CANCELLED:
      return "cancelled";
    case v1::STOP_REASON_CONTEXT_FULL:
      return "context full";
    default:
      return "unspecified";
  }
}

absl::Status FillPolicy(const std::string& spec, v1::CachePolicy* out) {
  absl::StatusOr<memory::PolicyConfig> policy = memory::PolicyConfig::Parse(spec);
  if (!policy.ok()) return policy.status();
  switch (policy->kind) {
    case memory::PolicyKind::kFull:
      out->set_kind(v1::POLICY_FULL);
      break;
    case memory::PolicyKind::kWindow:
      out->set_kind(v1::POLICY_WINDOW);
      break;
    case memory::PolicyKind::kStreaming:
      out->set_kind(v1::POLICY_STREAMING);
      break;
    case memory::PolicyKind::kSirLlm:
      out->set_kind(v1::POLICY_SIRLLM);
      break;
    case memory::PolicyKind::kRecompute:
      return absl::InvalidArgumentError("the service does not offer recompute");
  }
  out->set_sinks(policy->sinks);
  out->set_window(policy->window);
  out->set_entropy(policy->entropy);
  out->set_decay(policy->decay);
  out->set_max_pinned_cells(policy->max_pinned);
  return absl::OkStatus();
}

constexpr std::string_view kPinCommand = "/pin ";
constexpr std::string_view kUnpinCommand = "/unpin ";

}  // namespace

int RunChat(const std::vector<std::string>& args) {
  std::vector<FlagSpec> specs = {
      {"server", FlagKind::kString, "127.0.0.1:50051", "server address"},
      {"session", FlagKind::kString, "", "session id"},
      {"create", FlagKind::kBool, "false", "create the session when it does not exist"},
      {"message", FlagKind::kString, "", "send this one turn and exit"},
      {"max-tokens", FlagKind::kInt, "0", "tokens per reply at most; 0 = the server's default"},
      {"stop", FlagKind::kString, "", "also stop a reply before this text"},
      {"ignore-eos", FlagKind::kBool, "false",
       "generate past end-of-text tokens: every reply is --max-tokens long"},
      {"policy", FlagKind::kString, "",
       "cache policy of a created session, e.g. streaming(4,252); empty = server default"},
      {"system-prompt", FlagKind::kString, "", "system prompt of a created session"},
      {"chat-template", FlagKind::kString, "",
       "chat template of a created session (raw, llama2, llama3, chatml, mistral, zephyr); "
       "empty = from the model"},
      {"temperature", FlagKind::kDouble, "-1",
       "sampling temperature of a created session; -1 = the server's default"},
      {"seed", FlagKind::kInt, "-1", "RNG seed of a created session; -1 = the server's"},
      {"timeout", FlagKind::kDouble, "0", "deadline of the whole stream in seconds; 0 = none"},
      {"turn-id", FlagKind::kString, "",
       "--message: the turn's id for exactly-once retries; empty = a random one"},
      {"retries", FlagKind::kInt, "5",
       "--message: reconnect and resend this many times on UNAVAILABLE or a broken stream"},
      {"pin", FlagKind::kBool, "false",
       "pin every turn sent: its text stays in the cache until unpinned"},
      {"pin-system-prompt", FlagKind::kString, "",
       "a created session pins its system prompt: true, false; empty = the server's default "
       "(pinned when there is one)"},
      {"quiet", FlagKind::kBool, "false", "no statistics on stderr"}};
  AddClientSecurityFlags(&specs);
  FlagSet flags("chat", kSynopsis, std::move(specs));
  if (int rc = ParseOrExit(flags, args); rc >= 0) return rc;
  if (flags.GetString("session").empty()) {
    std::cerr << "sinkserve chat: --session is required\n";
    return kExitUsage;
  }
  v1::OpenSession open;
  open.set_session_id(flags.GetString("session"));
  open.set_create_if_missing(flags.GetBool("create"));
  v1::SessionConfig* config = open.mutable_config();
  if (!flags.GetString("policy").empty()) {
    if (absl::Status s = FillPolicy(flags.GetString("policy"), config->mutable_policy()); !s.ok()) {
      std::cerr << "sinkserve chat: " << s.message() << "\n";
      return kExitUsage;
    }
  }
  config->set_system_prompt(flags.GetString("system-prompt"));
  config->set_chat_template(flags.GetString("chat-template"));
  if (const std::string pin = flags.GetString("pin-system-prompt"); !pin.empty()) {
    if (pin != "true" && pin != "false") {
      std::cerr << "sinkserve chat: --pin-system-prompt must be true or false, got " << pin
                << "\n";
      return kExitUsage;
    }
    config->set_pin_system_prompt(pin == "true");
  }
  if (flags.GetDouble("temperature") >= 0) {
    config->mutable_sampling()->set_temperature(flags.GetDouble("temperature"));
  }
  if (flags.GetInt("seed") >= 0) config->mutable_sampling()->set_seed(flags.GetInt("seed"));
  const bool quiet = flags.GetBool("quiet");
  const double timeout = flags.GetDouble("timeout");

  // Interactive: Ctrl-C stops the reply being generated (the server ends the
  // turn as cancelled and keeps what was said); Ctrl-C between turns quits.
  // SIGINT is blocked before gRPC starts its threads, so that only the
  // sigwait thread below ever takes it.
  const bool interactive = !flags.Has("message") && isatty(STDIN_FILENO);
  sigset_t sigint;
  sigemptyset(&sigint);
  sigaddset(&sigint, SIGINT);
  if (interactive) pthread_sigmask(SIG_BLOCK, &sigint, nullptr);

  absl::StatusOr<service::security::ClientSecurity> security = ClientSecurityFromFlags(flags);
  if (!security.ok()) return Fail("chat", security.status());
  absl::StatusOr<std::shared_ptr<grpc::Channel>> opened_channel =
      service::security::OpenChannel(flags.GetString("server"), *security);
  if (!opened_channel.ok()) return Fail("chat", opened_channel.status());
  std::shared_ptr<grpc::Channel> channel = *std::move(opened_channel);
  auto fill_turn = [&](const std::string& text, bool pin) {
    v1::UserTurn turn;
    turn.set_text(text);
    if (pin) {
      // UnpinTurn names a pinned turn by its id.
      turn.set_pin(true);
      turn.set_turn_id(service::NewTurnId());
    }
    turn.set_max_tokens(flags.GetInt("max-tokens"));
    turn.set_ignore_eos(flags.GetBool("ignore-eos"));
    if (!flags.GetString("stop").empty()) turn.add_stop(flags.GetString("stop"));
    return turn;
  };
  auto print_delta = [](const v1::TokenDelta& delta) {
    std::fwrite(delta.text().data(), 1, delta.text().size(), stdout);
    std::fflush(stdout);
  };
  auto print_end = [&](const v1::TurnEnd& end) {
    if (quiet) return;
    std::cerr << absl::StrFormat(
        "[%s%s: %d prompt + %d generated tokens, %d cells kept (%d pinned), %d evicted; first "
        "token %.1f ms, %.1f tokens/s]\n",
        StopName(end.stop_reason()), end.replayed() ? ", replayed (the turn had completed)" : "",
        end.usage().prompt_tokens(), end.usage().generated_tokens(), end.usage().cells_kept(),
        end.usage().cells_pinned(), end.usage().cells_evicted(),
        end.timings().time_to_first_token_ms(),
        end.timings().tokens_per_second());
  };
  auto print_opened = [&](const v1::SessionOpened& opened) {
    if (quiet) return;
    std::cerr << absl::StrFormat(
        "[session %s %s: %d cells cached (%d pinned), %d rounds, template %s]\n",
        opened.session().session_id(), opened.restored() ? "restored from the store" : "attached",
        opened.session().cells_cached(), opened.session().pinned_cells(),
        opened.session().rounds(), opened.session().chat_template());
    for (const std::string& w : opened.warnings()) std::cerr << "[warning: " << w << "]\n";
  };
  if (flags.Has("message")) {
    if (flags.GetInt("retries") < 0 || flags.GetInt("retries") > 1000) {
      std::cerr << "sinkserve chat: --retries out of range: " << flags.GetInt("retries") << "\n";
      return kExitUsage;
    }
    v1::UserTurn turn = fill_turn(flags.GetString("message"), flags.GetBool("pin"));
    turn.set_turn_id(flags.GetString("turn-id").empty() ? service::NewTurnId()
                                                        : flags.GetString("turn-id"));
    if (turn.pin() && !quiet) std::cerr << "[pinned as turn " << turn.turn_id() << "]\n";
    service::RetryOptions retry;
    retry.max_attempts = 1 + static_cast<int>(flags.GetInt("retries"));
    absl::StatusOr<service::ClientTurnResult> result = service::TurnWithRetries(
        channel, open, turn, retry,
        timeout > 0 ? absl::Seconds(timeout) : absl::InfiniteDuration(), print_delta,
        [&](int attempt, const absl::Status& why) {
          // A new attempt replays or reruns the reply from its start.
          std::printf("\n");
          std::fflush(stdout);
          if (!quiet) {
            std::cerr << "[attempt " << attempt << " failed (" << service::DescribeStatus(why)
                      << "); resending turn " << turn.turn_id() << "]\n";
          }
        },
        print_opened);
    std::printf("\n");
    std::fflush(stdout);
    if (!result.ok())
      return Fail("chat", absl::UnknownError(service::DescribeStatus(result.status())));
    print_end(result->end);
    return kExitOk;
  }
  absl::StatusOr<std::unique_ptr<service::ChatClient>> client = service::ChatClient::Open(
      channel, open, timeout > 0 ? absl::Seconds(timeout) : absl::InfiniteDuration());
  if (!client.ok())
    return Fail("chat", absl::UnknownError(service::DescribeStatus(client.status())));
  print_opened((*client)->opened());

  if (interactive) {
    std::thread([&client, sigint] {
      int signal_number = 0;
      while (sigwait(&sigint, &signal_number) == 0) {
        if (!(*client)->CancelTurn()) std::_Exit(130);  // between turns: quit
      }
    }).detach();  // waits in sigwait until the process ends
  }
  auto run_turn = [&](const std::string& text, bool pin) -> absl::Status {
    const v1::UserTurn turn = fill_turn(text, pin);
    if (pin && !quiet) std::cerr << "[pinned as turn " << turn.turn_id() << "]\n";
    absl::StatusOr<service::ClientTurnResult> result = (*client)->Turn(turn, print_delta);
    std::printf("\n");
    std::fflush(stdout);
    if (!result.ok()) {
      // A refused pin (over the session's limit) ends only that turn.
      if (result.status().code() == absl::StatusCode::kResourceExhausted && pin) {
        std::cerr << "[not pinned: " << result.status().message() << "]\n";
        return absl::OkStatus();
      }
      return result.status();
    }
    print_end(result->end);
    return absl::OkStatus();
  };
  auto run_unpin = [&](const std::string& turn_id) -> absl::Status {
    absl::StatusOr<v1::Unpinned> unpinned = (*client)->Unpin(turn_id);
    if (!unpinned.ok()) {
      if (unpinned.status().code() != absl::StatusCode::kNotFound) return unpinned.status();
      std::cerr << "[" << unpinned.status().message() << "]\n";
      return absl::OkStatus();
    }
    std::cerr << absl::StrFormat("[unpinned turn %s: %d cells; %d pinned cells left]\n",
                                 unpinned->turn_id(), unpinned->cells(),
                                 unpinned->pinned_cells());
    return absl::OkStatus();
  };

  absl::Status status;
  std::string line;
  while (status.ok()) {
    if (interactive) {
      std::cout << "> " << std::flush;
    }
    if (!std::getline(std::cin, line)) break;
    if (line.empty()) continue;
    if (line.rfind(kUnpinCommand, 0) == 0) {
      status = run_unpin(line.substr(kUnpinCommand.size()));
    } else if (line.rfind(kPinCommand, 0) == 0) {
      status = run_turn(line.substr(kPinCommand.size()), true);
    } else {
      status = run_turn(line, flags.GetBool("pin"));
    }
  }
  if (status.ok()) status = (*client)->Close();
  if (!status.ok()) return Fail("chat", absl::UnknownError(service::DescribeStatus(status)));
  return kExitOk;
}

}  // namespace sinkserve::cli
