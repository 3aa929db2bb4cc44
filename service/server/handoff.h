// Session handoff between replicas sharing one store (the Replicas gRPC
// service of proto/sinkserve/v1/replicas.proto).
//
// HandoffService answers another replica that wants a session this one
// holds: it refuses new claims of the session, ends the stream attached to
// it (UNAVAILABLE: its client retries, and the load balancer sends it to the
// asker), waits until the session is detached and its last checkpoint is
// durable, drops it from memory, releases the lease and answers. Everything
// that touches the session runs on the scheduler thread, in short probes;
// the waiting happens on one handoff thread, never on the scheduler.
//
// HandoffClient is the asking side: a memory::HandoffFn over gRPC.
#ifndef SINKSERVE_SERVICE_SERVER_HANDOFF_H_
#define SINKSERVE_SERVICE_SERVER_HANDOFF_H_

#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "memory/session_leases.h"
#include "service/server/sinkserve_service.h"
#include "sinkserve/v1/replicas.grpc.pb.h"

namespace sinkserve::service {

class HandoffService final
    : public v1::Replicas::WithCallbackMethod_HandOff<v1::Replicas::Service> {
 public:
  // `chat` outlives this. Until Enable, every request is answered
  // FAILED_PRECONDITION (this process holds no lease yet).
  explicit HandoffService(SinkServeService* chat);
  ~HandoffService() override;

  // Serving: `cookie` is this process's lease cookie; a handoff gives up
  // within `budget` or answers ABORTED.
  void Enable(std::string cookie, absl::Duration budget);
  // Answers what is pending with ABORTED and stops the handoff thread.
  void Stop();

  grpc::ServerUnaryReactor* HandOff(grpc::CallbackServerContext* context,
                                    const v1::HandOffRequest* request,
                                    v1::HandOffResponse* response) override;

 private:
  struct Pending {
    std::string id;
    grpc::ServerUnaryReactor* reactor;
    v1::HandOffResponse* response;
    absl::Time deadline;
    bool ended_streams = false;
  };
  void Loop();
  // One probe of `p` on the scheduler thread: true once the session left
  // memory.
  bool Probe(Pending& p);
  void Answer(Pending& p, const grpc::Status& status);

  SinkServeService* const chat_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::string cookie_;            // guarded by mu_
  absl::Duration budget_;         // guarded by mu_
  bool enabled_ = false;          // guarded by mu_
  bool stop_ = false;             // guarded by mu_
  std::deque<Pending> incoming_;  // guarded by mu_
  std::thread thread_;
};

// Asks replicas over gRPC (one channel per address, kept).
class HandoffClient {
 public:
  // Calls the other replicas with `credentials` (TLS when the replicas serve
  // TLS) and channel `args`.
  HandoffClient(std::shared_ptr<grpc::ChannelCredentials> credentials, grpc::ChannelArguments args)
      : credentials_(std::move(credentials)), args_(std::move(args)) {}

  memory::HandoffAnswer Ask(const std::string& owner_address, const std::string& owner_cookie,
                            const std::string& id, absl::Duration timeout);
  // As a memory::HandoffFn; the client must outlive it.
  memory::HandoffFn AsFn();

 private:
  const std::shared_ptr<grpc::ChannelCredentials> credentials_;
  const grpc::ChannelArguments args_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_;  // guarded by mu_
};

}  // namespace sinkserve::service

#endif  // SINKSERVE_SERVICE_SERVER_HANDOFF_H_
