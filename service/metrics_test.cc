#include "service/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmath>
#include <limits>
#include <memory>
#include <sstream>
#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sinkserve::service {
namespace {

using ::testing::HasSubstr;

// The value of the sample whose name and labels are exactly `series` (e.g.
// `x_total{code="NOT_FOUND"}`) in text format, or NaN when absent.
double Sample(const std::string& text, const std::string& series) {
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(series + " ", 0) == 0) {
      return std::stod(line.substr(series.size() + 1));
    }
  }
  return std::numeric_limits<double>::quiet_NaN();
}

std::unique_ptr<Metrics> NewMetrics(MetricsOptions options = {}) {
  absl::StatusOr<std::unique_ptr<Metrics>> metrics = Metrics::Create(options);
  EXPECT_TRUE(metrics.ok()) << metrics.status();
  return metrics.ok() ? std::move(*metrics) : nullptr;
}

TEST(MetricsTest, AllSeriesStartAtZero) {
  auto metrics = NewMetrics();
  ASSERT_NE(metrics, nullptr);
  EXPECT_EQ(metrics->port(), 0);
  const std::string text = metrics->RenderText();
  for (const char* series :
       {"sinkserve_time_to_first_token_seconds_count",
        "sinkserve_inter_token_latency_seconds_count",
        "sinkserve_checkpoint_duration_seconds_count", "sinkserve_batch_turns_count",
        "sinkserve_checkpoint_bytes_total", "sinkserve_generated_tokens_total",
        "sinkserve_prompt_tokens_total", "sinkserve_active_streams",
        "sinkserve_sessions_in_memory", "sinkserve_sessions_in_store",
        "sinkserve_cache_cells{policy=\"streaming\"}", "sinkserve_cache_cells{policy=\"sirllm\"}",
        "sinkserve_session_memory_bytes"}) {
    EXPECT_EQ(Sample(text, series), 0) << series << "\n" << text;
  }
  EXPECT_EQ(Sample(text, "sinkserve_errors_total{code=\"DATA_LOSS\"}"), 0);
  EXPECT_EQ(Sample(text, "sinkserve_evicted_cells_total{policy=\"sirllm\"}"),
            0);
  EXPECT_THAT(text, HasSubstr(
      "# TYPE sinkserve_time_to_first_token_seconds histogram"));
}

TEST(MetricsTest, CountersAndGauges) {
  auto metrics = NewMetrics();
  ASSERT_NE(metrics, nullptr);
  metrics->AddGenerated(5);
  metrics->AddGenerated(7);
  metrics->AddGenerated(-3);  // ignored
  metrics->AddPromptTokens(40);
  metrics->IncError("NOT_FOUND");
  metrics->IncError("NOT_FOUND");
  metrics->IncError("RESOURCE_EXHAUSTED");
  metrics->IncError("");
  metrics->AddEvictions("sirllm", 100);
  metrics->AddEvictions("streaming", 3);
  metrics->AddEvictions("sirllm", 28);
  metrics->ObserveCheckpoint(0.02, 4096);
  metrics->ObserveCheckpoint(0.2, 1000);
  metrics->ObserveBatch(32);
  metrics->ObserveBatch(1);
  metrics->ObserveBatch(0);  // no step: ignored
  metrics->SetActiveStreams(3);
  metrics->IncActiveStreams();
  metrics->DecActiveStreams();
  metrics->DecActiveStreams();
  metrics->SetSessionsInMemory(8);
  metrics->SetSessionsInStore(120);
  metrics->SetCacheCells("streaming", 2048);
  metrics->SetCacheCells("sirllm", 256);
  metrics->SetSessionMemoryBytes(1 << 20);

  const std::string text = metrics->RenderText();
  EXPECT_EQ(Sample(text, "sinkserve_generated_tokens_total"), 12) << text;
  EXPECT_EQ(Sample(text, "sinkserve_prompt_tokens_total"), 40);
  EXPECT_EQ(Sample(text, "sinkserve_errors_total{code=\"NOT_FOUND\"}"), 2);
  EXPECT_EQ(Sample(text, "sinkserve_errors_total{code=\"RESOURCE_EXHAUSTED\"}"),
            1);
  EXPECT_EQ(Sample(text, "sinkserve_errors_total{code=\"UNKNOWN\"}"), 1);
  EXPECT_EQ(Sample(text, "sinkserve_evicted_cells_total{policy=\"sirllm\"}"),
            128);
  EXPECT_EQ(
      Sample(text, "sinkserve_evicted_cells_total{policy=\"streaming\"}"), 3);
  EXPECT_EQ(Sample(text, "sinkserve_checkpoint_bytes_total"), 5096);
  EXPECT_EQ(Sample(text, "sinkserve_checkpoint_duration_seconds_count"), 2);
  EXPECT_DOUBLE_EQ(Sample(text, "sinkserve_checkpoint_duration_seconds_sum"),
                   0.22);
  EXPECT_EQ(Sample(text, "sinkserve_batch_turns_count"), 2);
  EXPECT_EQ(Sample(text, "sinkserve_batch_turns_sum"), 33);
  EXPECT_EQ(Sample(text, "sinkserve_batch_turns_bucket{le=\"1\"}"), 1);
  EXPECT_EQ(Sample(text, "sinkserve_active_streams"), 2);
  EXPECT_EQ(Sample(text, "sinkserve_sessions_in_memory"), 8);
  EXPECT_EQ(Sample(text, "sinkserve_sessions_in_store"), 120);
  EXPECT_EQ(Sample(text, "sinkserve_cache_cells{policy=\"streaming\"}"), 2048);
  EXPECT_EQ(Sample(text, "sinkserve_cache_cells{policy=\"sirllm\"}"), 256);
  EXPECT_EQ(Sample(text, "sinkserve_session_memory_bytes"), 1 << 20);
}

TEST(MetricsTest, HistogramBuckets) {
  MetricsOptions options;
  options.time_to_first_token_buckets = {0.1, 1};
  options.inter_token_buckets = {0.01};
  auto metrics = NewMetrics(options);
  ASSERT_NE(metrics, nullptr);
  metrics->ObserveTimeToFirstToken(0.05);
  metrics->ObserveTimeToFirstToken(0.5);
  metrics->ObserveTimeToFirstToken(0.7);
  metrics->ObserveTimeToFirstToken(3);
  metrics->ObserveTimeToFirstToken(-1);  // dropped
  metrics->ObserveTimeToFirstToken(std::nan(""));
  metrics->ObserveInterTokenLatency(0.002);
  metrics->ObserveInterTokenLatency(0.02);

  const std::string text = metrics->RenderText();
  const std::string ttft = "sinkserve_time_to_first_token_seconds";
  // Cumulative buckets, as the exposition format defines them.
  EXPECT_EQ(Sample(text, ttft + "_bucket{le=\"0.1\"}"), 1) << text;
  EXPECT_EQ(Sample(text, ttft + "_bucket{le=\"1\"}"), 3);
  EXPECT_EQ(Sample(text, ttft + "_bucket{le=\"+Inf\"}"), 4);
  EXPECT_EQ(Sample(text, ttft + "_count"), 4);
  EXPECT_DOUBLE_EQ(Sample(text, ttft + "_sum"), 0.05 + 0.5 + 0.7 + 3);
  const std::string itl = "sinkserve_inter_token_latency_seconds";
  EXPECT_EQ(Sample(text, itl + "_bucket{le=\"0.01\"}"), 1);
  EXPECT_EQ(Sample(text, itl + "_count"), 2);
}

TEST(MetricsTest, BadOptionsAreInvalidArgument) {
  MetricsOptions unsorted;
  unsorted.inter_token_buckets = {0.1, 0.01};
  EXPECT_EQ(Metrics::Create(unsorted).status().code(),
            absl::StatusCode::kInvalidArgument);
  MetricsOptions empty;
  empty.checkpoint_buckets.clear();
  EXPECT_EQ(Metrics::Create(empty).status().code(),
            absl::StatusCode::kInvalidArgument);
  MetricsOptions threads;
  threads.exposer_threads = 0;
  EXPECT_EQ(Metrics::Create(threads).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// A plain HTTP/1.0 GET over a real socket; "" on any failure.
std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  // Guards the test against a hung server; not a timing assertion.
  timeval timeout{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request =
        "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (send(fd, request.data(), request.size(), 0) ==
        static_cast<ssize_t>(request.size())) {
      char buffer[4096];
      for (ssize_t n; (n = recv(fd, buffer, sizeof(buffer), 0)) > 0;) {
        response.append(buffer, n);
      }
    }
  }
  close(fd);
  return response;
}

TEST(MetricsExposerTest, ServesMetricsOverHttp) {
  MetricsOptions options;
  options.listen_address = "127.0.0.1:0";
  auto metrics = NewMetrics(options);
  ASSERT_NE(metrics, nullptr);
  ASSERT_GT(metrics->port(), 0);
  metrics->AddGenerated(42);
  metrics->IncError("CANCELLED");

  const std::string response = HttpGet(metrics->port(), "/metrics");
  ASSERT_THAT(response, HasSubstr(" 200 "));
  const size_t body = response.find("\r\n\r\n");
  ASSERT_NE(body, std::string::npos);
  const std::string text = response.substr(body + 4);
  EXPECT_EQ(Sample(text, "sinkserve_generated_tokens_total"), 42) << text;
  EXPECT_EQ(Sample(text, "sinkserve_errors_total{code=\"CANCELLED\"}"), 1);

  // A second exposer cannot take the same port: a status, not a crash.
  MetricsOptions same = options;
  same.listen_address = "127.0.0.1:" + std::to_string(metrics->port());
  const absl::StatusOr<std::unique_ptr<Metrics>> clash = Metrics::Create(same);
  ASSERT_FALSE(clash.ok());
  EXPECT_EQ(clash.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(clash.status().message(), HasSubstr(same.listen_address));
}

}  // namespace
}  // namespace sinkserve::service
