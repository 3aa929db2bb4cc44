// `sinkserve bench load`: many concurrent Chat sessions against a running
// server; aggregate throughput and client-side latency percentiles.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "grpcpp/grpcpp.h"
#include "service/cli/commands.h"
#include "service/cli/security_flags.h"
#include "service/server/chat_client.h"

namespace sinkserve::cli {
namespace {

constexpr char kSynopsis[] =
    "--server ADDR [--sessions N] [--turns K] [--tokens M] [--prompt TEXT]\n"
    "Opens N sessions at once (each its own Chat stream and thread), runs K turns\n"
    "of up to M generated tokens in each, then deletes them (unless --keep).\n"
    "Reports aggregate generated tokens/s over the wall time of the turns, the\n"
    "time to first token and the inter-token latency seen by the clients\n"
    "(p50/p99), and the number of failed sessions.";

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5));
  return v[i];
}

}  // namespace

int RunBenchLoad(const std::vector<std::string>& args) {
  std::vector<FlagSpec> specs = {
      {"server", FlagKind::kString, "127.0.0.1:50051", "server address"},
      {"sessions", FlagKind::kInt, "8", "concurrent sessions"},
      {"turns", FlagKind::kInt, "4", "turns per session"},
      {"tokens", FlagKind::kInt, "64", "tokens generated per turn at most"},
      {"prompt", FlagKind::kString, "Once upon a time, there was a little", "text of every turn"},
      {"temperature", FlagKind::kDouble, "0.8", "sampling temperature of the sessions"},
      {"prefix", FlagKind::kString, "", "session id prefix; empty = bench-<pid>-"},
      {"keep", FlagKind::kBool, "false", "keep the sessions instead of deleting them"},
      {"ignore-eos", FlagKind::kBool, "true",
       "generate past end-of-text tokens, so every turn is --tokens long"},
      {"timeout", FlagKind::kDouble, "600", "deadline of each stream in seconds"}};
  AddClientSecurityFlags(&specs);
  FlagSet flags("bench load", kSynopsis, std::move(specs));
  if (int rc = ParseOrExit(flags, args); rc >= 0) return rc;
  const int64_t n = flags.GetInt("sessions");
  const int64_t turns = flags.GetInt("turns");
  const int64_t tokens = flags.GetInt("tokens");
  if (n < 1 || n > 10000 || turns < 1 || tokens < 1) {
    std::cerr << "sinkserve bench load: --sessions (1..10000), --turns, --tokens must be >= 1\n";
    return kExitUsage;
  }
  const std::string prefix = flags.GetString("prefix").empty()
                                 ? absl::StrCat("bench-", getpid(), "-")
                                 : flags.GetString("prefix");
  grpc::ChannelArguments channel_args;
  channel_args.SetInt(GRPC_ARG_MAX_CONCURRENT_STREAMS, 100000);
  absl::StatusOr<service::security::ClientSecurity> security = ClientSecurityFromFlags(flags);
  if (!security.ok()) return Fail("bench load", security.status());
  absl::StatusOr<std::shared_ptr<grpc::Channel>> opened_channel =
      service::security::OpenChannel(flags.GetString("server"), *security, channel_args);
  if (!opened_channel.ok()) return Fail("bench load", opened_channel.status());
  std::shared_ptr<grpc::Channel> channel = *std::move(opened_channel);

  std::mutex mu;
  std::condition_variable cv;
  int64_t opened = 0;
  int64_t generated = 0;
  int64_t errors = 0;
  std::string first_error;
  std::vector<double> ttft;
  std::vector<double> itl;
  std::chrono::steady_clock::time_point start;

  auto run = [&](int64_t i) {
    v1::OpenSession open;
    open.set_session_id(absl::StrCat(prefix, i));
    open.set_create_if_missing(true);
    open.mutable_config()->mutable_sampling()->set_temperature(flags.GetDouble("temperature"));
    open.mutable_config()->mutable_sampling()->set_seed(i);
    absl::StatusOr<std::unique_ptr<service::ChatClient>> client =
        service::ChatClient::Open(channel, open, absl::Seconds(flags.GetDouble("timeout")));
    {
      // Every session opens before the clock starts: turns only.
      std::unique_lock<std::mutex> lock(mu);
      ++opened;
      cv.notify_all();
      cv.wait(lock, [&] { return opened == n; });
    }
    absl::Status status = client.status();
    std::vector<double> my_ttft, my_itl;
    int64_t my_generated = 0;
    for (int64_t t = 0; status.ok() && t < turns; ++t) {
      v1::UserTurn turn;
      turn.set_text(flags.GetString("prompt"));
      turn.set_max_tokens(tokens);
      turn.set_ignore_eos(flags.GetBool("ignore-eos"));
      absl::StatusOr<service::ClientTurnResult> result = (*client)->Turn(turn);
      if (!result.ok()) {
        status = result.status();
        break;
      }
      my_generated += result->end.usage().generated_tokens();
      if (!result->token_ids.empty()) my_ttft.push_back(result->time_to_first_token);
      my_itl.insert(my_itl.end(), result->inter_token.begin(), result->inter_token.end());
    }
    if (status.ok()) status = (*client)->Close();
    std::lock_guard<std::mutex> lock(mu);
    generated += my_generated;
    ttft.insert(ttft.end(), my_ttft.begin(), my_ttft.end());
    itl.insert(itl.end(), my_itl.begin(), my_itl.end());
    if (!status.ok()) {
      ++errors;
      if (first_error.empty()) first_error = service::DescribeStatus(status);
    }
  };

  std::vector<std::thread> threads;
  threads.reserve(n);
  for (int64_t i = 0; i < n; ++i) threads.emplace_back(run, i);
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return opened == n; });
    start = std::chrono::steady_clock::now();
  }
  for (std::thread& t : threads) t.join();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  if (!flags.GetBool("keep")) {
    auto stub = v1::SinkServe::NewStub(channel);
    for (int64_t i = 0; i < n; ++i) {
      grpc::ClientContext context;
      v1::DeleteSessionRequest request;
      v1::DeleteSessionResponse response;
      request.set_session_id(absl::StrCat(prefix, i));
      (void)stub->DeleteSession(&context, request, &response);
    }
  }

  std::cout << absl::StrFormat(
      "sessions %d, turns %d, tokens/turn <= %d: %d tokens in %.2f s = %.1f tokens/s "
      "aggregate\n",
      n, turns, tokens, generated, seconds, seconds > 0 ? generated / seconds : 0.0);
  std::cout << absl::StrFormat("time to first token: p50 %.2f ms, p99 %.2f ms (%d turns)\n",
                               1e3 * Percentile(ttft, 0.5), 1e3 * Percentile(ttft, 0.99),
                               ttft.size());
  std::cout << absl::StrFormat("inter-token latency: p50 %.3f ms, p99 %.3f ms\n",
                               1e3 * Percentile(itl, 0.5), 1e3 * Percentile(itl, 0.99));
  std::cout << "errors: " << errors << (errors > 0 ? " (first: " + first_error + ")" : "") << "\n";
  return errors == 0 ? kExitOk : kExitError;
}

}  // namespace sinkserve::cli
