// The CSI endpoint's listening socket and the accept loop that hands each new
// connection to the gRPC server (grpc::AddInsecureChannelFromFd).
//
// Why the plugin owns the loop: gRPC 1.51's (src/core/lib/iomgr/
// tcp_server_posix.cc, on_read) treats any accept4 error other than
// EINTR/EAGAIN/ECONNABORTED, EMFILE included, as the end of that listener and
// never polls it again: one moment at RLIMIT_NOFILE and every later
// connection hangs forever. Here a resource error (EMFILE, ENFILE, ENOBUFS,
// ENOMEM) stalls the loop with a growing backoff until accept succeeds again:
// one WARNING when it stalls, one INFO when it resumes, a counter and a gauge.
//
// A unix socket gets its mode set explicitly, whatever the umask: 0600, or
// 0660 with its group set to `socket_group`. One thread, started by Start()
// and joined by Stop(), runs the loop.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "csi/endpoint.h"
#include "ublk/unique_fd.h"

namespace prometheus {
class Counter;
class Gauge;
class Registry;
}  // namespace prometheus

namespace ublk_csi {

struct ListenerOptions {
  // Unix sockets: nullopt = mode 0600 (owner only); a gid = mode 0660 with
  // that group (for sidecars running as another user in that group).
  std::optional<gid_t> socket_group;
  // Longest wait between two accept attempts while accept fails.
  absl::Duration max_backoff = absl::Seconds(1);
  // The accept seam (tests make it fail). Must return a non-blocking,
  // close-on-exec fd, or -1 with errno set. Default: accept4.
  std::function<int(int listen_fd)> accept_fn;
};

class Listener {
 public:
  // Creates, binds and listens. The caller has run PrepareEndpoint (stale
  // socket removal). `registry` may be null.
  static absl::StatusOr<std::unique_ptr<Listener>> Bind(const Endpoint& endpoint,
                                                        ListenerOptions options,
                                                        prometheus::Registry* registry);
  ~Listener();

  // Starts the accept thread; each accepted fd is passed to `on_connection`,
  // which owns it from then on.
  absl::Status Start(std::function<void(int fd)> on_connection);
  // Stops accepting and joins the thread. Safe to call twice.
  void Stop();

  // TCP: the port bound.
  int port() const { return port_; }
  // True while accept is failing (and connections wait in the backlog).
  bool stalled() const { return stalled_.load(); }

 private:
  Listener() = default;
  void Loop();
  // Waits `d` or until Stop(); returns false if stopped.
  bool SleepUnlessStopped(absl::Duration d);

  Endpoint endpoint_;
  ListenerOptions options_;
  ublk::UniqueFd listen_fd_;
  ublk::UniqueFd stop_fd_;  // eventfd, written by Stop()
  int port_ = 0;
  std::function<void(int)> on_connection_;
  std::thread thread_;
  std::atomic<bool> stalled_{false};
  prometheus::Counter* failures_ = nullptr;
  prometheus::Gauge* stalled_gauge_ = nullptr;
};

}  // namespace ublk_csi
