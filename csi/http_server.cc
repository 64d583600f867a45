#include "csi/http_server.h"

#include <string>

#include "CivetServer.h"
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

struct HttpServer::Handlers {
  FuncHandler metrics;
  FuncHandler healthz;
  FuncHandler readyz;
};

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(
    const std::string& address, std::shared_ptr<prometheus::Registry> registry,
    const Health* health, std::function<absl::Status()> liveness,
    std::function<void()> before_metrics) {
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
  std::vector<std::string> options = {"listening_ports", address, "num_threads", "2"};
  try {
    s->server_ = std::make_unique<CivetServer>(options);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("metrics address ", address, ": cannot listen: ", e.what()));
  }
  s->server_->addHandler("/metrics", &s->handlers_->metrics);
  s->server_->addHandler("/healthz", &s->handlers_->healthz);
  s->server_->addHandler("/readyz", &s->handlers_->readyz);
  std::vector<int> ports = s->server_->getListeningPorts();
  s->port_ = ports.empty() ? 0 : ports[0];
  LOG(INFO) << "metrics and health on " << address << " (port " << s->port_ << ")";
  return s;
}

HttpServer::~HttpServer() {
  if (server_) server_->close();
}

}  // namespace ublk_csi
