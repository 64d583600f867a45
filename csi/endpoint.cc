#include "csi/endpoint.h"

#include <errno.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "ublk/errno.h"
#include "ublk/unique_fd.h"

namespace ublk_csi {

std::string Endpoint::GrpcTarget() const {
  return kind == Kind::kUnix ? absl::StrCat("unix:", path) : address;
}

namespace {

absl::StatusOr<Endpoint> ParseUnix(const std::string& spec, std::string path) {
  // unix:///abs/path leaves "/abs/path" after stripping "unix://".
  if (path.empty() || path[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("endpoint ", spec, ": unix socket path must be absolute (unix:///path)"));
  }
  if (path.size() >= sizeof(sockaddr_un{}.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("endpoint ", spec,
                                                   ": unix socket path longer than ",
                                                   sizeof(sockaddr_un{}.sun_path) - 1, " bytes"));
  }
  Endpoint e;
  e.kind = Endpoint::Kind::kUnix;
  e.path = std::move(path);
  return e;
}

absl::StatusOr<Endpoint> ParseTcp(const std::string& spec, const std::string& addr) {
  size_t colon = addr.rfind(':');
  uint32_t port = 0;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(addr.substr(colon + 1), &port) || port == 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("endpoint ", spec, ": expected unix:///path or tcp://host:port"));
  }
  Endpoint e;
  e.kind = Endpoint::Kind::kTcp;
  e.address = addr;
  return e;
}

}  // namespace

absl::StatusOr<Endpoint> ParseEndpoint(const std::string& spec) {
  if (spec.empty()) return absl::InvalidArgumentError("endpoint: empty");
  if (absl::StartsWith(spec, "unix://")) return ParseUnix(spec, spec.substr(7));
  if (absl::StartsWith(spec, "unix:")) return ParseUnix(spec, spec.substr(5));
  if (absl::StartsWith(spec, "tcp://")) return ParseTcp(spec, spec.substr(6));
  if (spec[0] == '/') return ParseUnix(spec, spec);
  return ParseTcp(spec, spec);
}

absl::Status PrepareEndpoint(const Endpoint& endpoint) {
  if (endpoint.kind != Endpoint::Kind::kUnix) return absl::OkStatus();
  struct stat st;
  if (::lstat(endpoint.path.c_str(), &st) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrCat("endpoint ", endpoint.path, ": stat: ", ublk::Errno(errno)));
  }
  if (!S_ISSOCK(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "endpoint ", endpoint.path, " exists and is not a socket; refusing to remove it"));
  }
  ublk::UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) {
    return absl::InternalError(absl::StrCat("socket: ", ublk::Errno(errno)));
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, endpoint.path.c_str(), endpoint.path.size() + 1);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("endpoint ", endpoint.path,
                     " is held by a live process (another ublk-csi instance?); refusing to start"));
  }
  if (errno != ECONNREFUSED && errno != ENOENT) {
    return absl::FailedPreconditionError(absl::StrCat(
        "endpoint ", endpoint.path, ": probing existing socket: ", ublk::Errno(errno)));
  }
  if (::unlink(endpoint.path.c_str()) != 0 && errno != ENOENT) {
    return absl::FailedPreconditionError(
        absl::StrCat("endpoint ", endpoint.path, ": removing stale socket: ", ublk::Errno(errno)));
  }
  LOG(INFO) << "removed stale socket " << endpoint.path;
  return absl::OkStatus();
}

}  // namespace ublk_csi
