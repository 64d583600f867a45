#include "csi/listener.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"

namespace ublk_csi {

namespace {

std::string ErrnoText(int err) {
  const char* d = strerrordesc_np(err);
  return d != nullptr ? d : absl::StrCat("errno ", err);
}

absl::StatusOr<ublk::UniqueFd> BindUnix(const std::string& path, const ListenerOptions& opts) {
  ublk::UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return absl::InternalError(absl::StrCat("socket: ", ErrnoText(errno)));
  const mode_t mode = opts.socket_group.has_value() ? 0660 : 0600;
  // Linux creates the socket file with the socket inode's mode minus the
  // umask, so setting it before bind means the file is never more open than
  // `mode`, not even between bind and the chmod below.
  if (::fchmod(fd.get(), mode) != 0) {
    return absl::InternalError(absl::StrCat("fchmod socket: ", ErrnoText(errno)));
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on unix:", path, ": bind: ", ErrnoText(errno)));
  }
  // Exactly `mode`, whatever the umask took away.
  if (opts.socket_group.has_value() && ::chown(path.c_str(), -1, *opts.socket_group) != 0) {
    int err = errno;
    ::unlink(path.c_str());
    return absl::FailedPreconditionError(absl::StrCat("socket ", path, ": chown to group ",
                                                      *opts.socket_group, ": ", ErrnoText(err)));
  }
  if (::chmod(path.c_str(), mode) != 0) {
    int err = errno;
    ::unlink(path.c_str());
    return absl::InternalError(absl::StrCat("chmod ", path, ": ", ErrnoText(err)));
  }
  return fd;
}

absl::StatusOr<ublk::UniqueFd> BindTcp(const std::string& address, int* port) {
  size_t colon = address.rfind(':');
  std::string host = address.substr(0, colon);
  const std::string service = address.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  int gai = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &res);
  if (gai != 0) {
    return absl::InvalidArgumentError(absl::StrCat("endpoint ", address, ": ", gai_strerror(gai)));
  }
  std::string last_error = "no address";
  ublk::UniqueFd bound;
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    ublk::UniqueFd fd(
        ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol));
    if (!fd.valid()) {
      last_error = ErrnoText(errno);
      continue;
    }
    int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
      last_error = ErrnoText(errno);
      continue;
    }
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len);
    *port = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                           : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
    bound = std::move(fd);
    break;
  }
  ::freeaddrinfo(res);
  if (!bound.valid()) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", address, ": ", last_error));
  }
  return bound;
}

// Errors after which the pending connection can be dropped and the next one
// tried at once (the peer went away, or a network error was reported on it).
bool IsPerConnectionError(int err) {
  switch (err) {
    case EINTR:
    case ECONNABORTED:
    case EPROTO:
    case ENETDOWN:
    case ENOPROTOOPT:
    case EHOSTDOWN:
    case ENONET:
    case EHOSTUNREACH:
    case EOPNOTSUPP:
    case ENETUNREACH:
    case EPERM:  // firewall rules
      return true;
    default:
      return false;
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Listener>> Listener::Bind(const Endpoint& endpoint,
                                                         ListenerOptions options,
                                                         prometheus::Registry* registry) {
  std::unique_ptr<Listener> l(new Listener());
  l->endpoint_ = endpoint;
  l->options_ = std::move(options);
  if (!l->options_.accept_fn) {
    l->options_.accept_fn = [](int listen_fd) {
      return ::accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    };
  }
  absl::StatusOr<ublk::UniqueFd> fd = endpoint.kind == Endpoint::Kind::kUnix
                                          ? BindUnix(endpoint.path, l->options_)
                                          : BindTcp(endpoint.address, &l->port_);
  if (!fd.ok()) return fd.status();
  l->listen_fd_ = std::move(*fd);
  if (::listen(l->listen_fd_.get(), SOMAXCONN) != 0) {
    return absl::UnavailableError(
        absl::StrCat("listen on ", endpoint.GrpcTarget(), ": ", ErrnoText(errno)));
  }
  l->stop_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!l->stop_fd_.valid()) return absl::InternalError(absl::StrCat("eventfd: ", ErrnoText(errno)));
  if (registry != nullptr) {
    l->failures_ = &prometheus::BuildCounter()
                        .Name("ublk_csi_grpc_accept_failures_total")
                        .Help(
                            "accept() on the CSI endpoint failed for lack of a resource "
                            "(EMFILE, ENFILE, ENOBUFS, ENOMEM); the connection waited")
                        .Register(*registry)
                        .Add({});
    l->stalled_gauge_ = &prometheus::BuildGauge()
                             .Name("ublk_csi_grpc_accept_stalled")
                             .Help(
                                 "1 while new connections to the CSI endpoint cannot be "
                                 "accepted (accept keeps failing), else 0")
                             .Register(*registry)
                             .Add({});
  }
  return l;
}

Listener::~Listener() { Stop(); }

absl::Status Listener::Start(std::function<void(int fd)> on_connection) {
  if (thread_.joinable()) return absl::FailedPreconditionError("listener already started");
  on_connection_ = std::move(on_connection);
  thread_ = std::thread([this] { Loop(); });
  return absl::OkStatus();
}

void Listener::Stop() {
  if (thread_.joinable()) {
    uint64_t one = 1;
    if (::write(stop_fd_.get(), &one, sizeof(one)) < 0) {
      PLOG(ERROR) << "waking the CSI endpoint's accept thread";
    }
    thread_.join();
  }
  listen_fd_.reset();
}

bool Listener::SleepUnlessStopped(absl::Duration d) {
  pollfd p{.fd = stop_fd_.get(), .events = POLLIN, .revents = 0};
  int r = ::poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(d)));
  return !(r > 0 && (p.revents & POLLIN));
}

void Listener::Loop() {
  const absl::Duration kFirstBackoff = absl::Milliseconds(10);
  absl::Duration backoff = kFirstBackoff;
  int64_t failures_in_stall = 0;
  for (;;) {
    pollfd p[2] = {{.fd = listen_fd_.get(), .events = POLLIN, .revents = 0},
                   {.fd = stop_fd_.get(), .events = POLLIN, .revents = 0}};
    if (::poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      // Cannot happen with valid fds; do not spin if it does.
      PLOG(ERROR) << "poll on the CSI endpoint";
      if (!SleepUnlessStopped(absl::Seconds(1))) return;
      continue;
    }
    if (p[1].revents & POLLIN) return;
    // Accept everything pending, then poll again.
    for (;;) {
      int fd = options_.accept_fn(listen_fd_.get());
      if (fd >= 0) {
        if (stalled_.exchange(false)) {
          LOG(INFO) << "CSI endpoint " << endpoint_.GrpcTarget() << ": accepting connections again"
                    << " after " << failures_in_stall << " failed accept attempts";
          if (stalled_gauge_ != nullptr) stalled_gauge_->Set(0);
        }
        failures_in_stall = 0;
        backoff = kFirstBackoff;
        if (endpoint_.kind == Endpoint::Kind::kTcp) {
          int one = 1;
          ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        }
        on_connection_(fd);
        continue;
      }
      const int err = errno;
      if (err == EAGAIN || err == EWOULDBLOCK) break;
      if (IsPerConnectionError(err)) continue;
      // EMFILE, ENFILE, ENOBUFS, ENOMEM (or anything unexpected): the
      // connection stays in the backlog; try again later, never give up.
      ++failures_in_stall;
      if (failures_ != nullptr) failures_->Increment();
      if (!stalled_.exchange(true)) {
        LOG(WARNING) << "CSI endpoint " << endpoint_.GrpcTarget()
                     << ": cannot accept connections: " << ErrnoText(err)
                     << "; new connections wait, retrying every <= " << options_.max_backoff;
        if (stalled_gauge_ != nullptr) stalled_gauge_->Set(1);
      }
      if (!SleepUnlessStopped(backoff)) return;
      backoff = std::min(backoff * 2, options_.max_backoff);
      break;
    }
  }
}

}  // namespace ublk_csi
