#include "csi/http_server.h"

#include <string>

#include "CivetServer.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "prometheus/text_serializer.h"

namespace ublk_csi {

namespace {

void Reply(mg_connection* conn, int code, const std::string& content_type,
           const std::string& body) {
  const char* reason = code == 200 ? "OK" : code == 503 ? "Service Unavailable" : "Error";
  mg_printf(conn,
            "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
            "Connection: close\r\n\r\n",
            code, reason, content_type.c_str(), body.size());
  mg_write(conn, body.data(), body.size());
}

class FuncHandler final : public CivetHandler {
 public:
  explicit FuncHandler(std::function<void(mg_connection*)> fn) : fn_(std::move(fn)) {}
  using CivetHandler::handleGet;
  bool handleGet(CivetServer*, mg_connection* conn) override {
    fn_(conn);
    return true;
  }

 private:
  std::function<void(mg_connection*)> fn_;
};

void ReplyStatus(mg_connection* conn, const absl::Status& s) {
  if (s.ok()) {
    Reply(conn, 200, "text/plain", "ok\n");
  } else {
    Reply(conn, 503, "text/plain", absl::StrCat(s.message(), "\n"));
  }
}

}  // namespace

absl::StatusOr<std::string> NormalizeHttpAddress(const std::string& address) {
  const size_t colon = address.rfind(':');
  uint32_t port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port) ||
      port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address ", address, ": expected host:port"));
  }
  std::string host = address.substr(0, colon);
  if (host.find(':') != std::string::npos && host.front() != '[') {
    host = absl::StrCat("[", host, "]");
  }
  if (host.empty()) return absl::StrCat(port);
  if (host.front() == '[' && mg_check_feature(8) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address ", address, ": this civetweb build has no IPv6 support"));
  }
  return absl::StrCat(host, ":", port);
}

struct HttpServer::Handlers {
  FuncHandler metrics;
  FuncHandler healthz;
  FuncHandler readyz;
};

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(
    const std::string& address, std::shared_ptr<prometheus::Registry> registry,
    const Health* health, std::function<absl::Status()> liveness,
    std::function<void()> before_metrics, HttpServerOptions options) {
  absl::StatusOr<std::string> listen = NormalizeHttpAddress(address);
  if (!listen.ok()) return listen.status();
  if (options.threads < 1 || options.request_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("HTTP server: threads and request timeout must be positive");
  }
  std::unique_ptr<HttpServer> s(new HttpServer());
  s->handlers_.reset(new Handlers{
      FuncHandler([registry, before_metrics](mg_connection* c) {
        if (before_metrics) before_metrics();
        prometheus::TextSerializer serializer;
        Reply(c, 200, "text/plain; version=0.0.4", serializer.Serialize(registry->Collect()));
      }),
      FuncHandler([liveness](mg_connection* c) { ReplyStatus(c, liveness()); }),
      FuncHandler([health](mg_connection* c) { ReplyStatus(c, health->Ready()); }),
  });
  std::vector<std::string> civet_options = {
      "listening_ports",    *listen,
      "num_threads",        absl::StrCat(options.threads),
      "request_timeout_ms", absl::StrCat(absl::ToInt64Milliseconds(options.request_timeout)),
      "enable_keep_alive",  "no",
  };
  try {
    s->server_ = std::make_unique<CivetServer>(civet_options);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("metrics address ", address, ": cannot listen: ", e.what()));
  }
  s->server_->addHandler("/metrics", &s->handlers_->metrics);
  s->server_->addHandler("/healthz", &s->handlers_->healthz);
  s->server_->addHandler("/readyz", &s->handlers_->readyz);
  std::vector<int> ports = s->server_->getListeningPorts();
  s->port_ = ports.empty() ? 0 : ports[0];
  LOG(INFO) << "metrics and health on " << *listen << " (port " << s->port_ << ", "
            << options.threads << " threads, request timeout " << options.request_timeout << ")";
  return s;
}

HttpServer::~HttpServer() {
  if (server_) server_->close();
}

}  // namespace ublk_csi
