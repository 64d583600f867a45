#include "csi/rpc_logging.h"

#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "csi/log_escape.h"
#include "glog/logging.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/reflection.h"

namespace ublk_csi {

namespace {

using grpc::experimental::InterceptionHookPoints;

// The only string fields ever logged. Secrets are map fields (skipped with
// every other repeated field), so they cannot reach the log even nested.
bool IsIdField(std::string_view name) {
  static constexpr std::string_view kIds[] = {
      "name",        "volume_id",   "snapshot_id",         "source_volume_id", "node_id",
      "target_path", "volume_path", "staging_target_path", "starting_token"};
  for (std::string_view id : kIds) {
    if (name == id) return true;
  }
  return false;
}

void AppendIds(const google::protobuf::Message& m, const std::string& prefix, int depth,
               std::string* out) {
  if (depth > 3) return;
  const google::protobuf::Descriptor* d = m.GetDescriptor();
  const google::protobuf::Reflection* r = m.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const google::protobuf::FieldDescriptor* f = d->field(i);
    if (f->is_repeated()) continue;
    if (f->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE) {
      if (r->HasField(m, f)) {
        AppendIds(r->GetMessage(m, f), absl::StrCat(prefix, f->name(), "."), depth + 1, out);
      }
      continue;
    }
    if (f->cpp_type() != google::protobuf::FieldDescriptor::CPPTYPE_STRING) continue;
    if (!IsIdField(f->name())) continue;
    std::string value = r->GetString(m, f);
    if (value.empty()) continue;
    absl::StrAppend(out, " ", prefix, f->name(), "=\"", EscapeForLog(value, 128), "\"");
  }
}

std::string_view ShortMethod(std::string_view method) {
  // "/csi.v1.Node/NodeStageVolume" -> "Node/NodeStageVolume"
  size_t slash = method.rfind('/');
  if (slash == std::string_view::npos || slash == 0) return method;
  size_t dot = method.rfind('.', slash);
  return dot == std::string_view::npos ? method.substr(1) : method.substr(dot + 1);
}

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      return "UNKNOWN_CODE";
  }
}

class RpcLoggingInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit RpcLoggingInterceptor(grpc::experimental::ServerRpcInfo* info)
      : method_(ShortMethod(info->method() != nullptr ? info->method() : "?")),
        start_(absl::Now()) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_MESSAGE)) {
      // The sync server hands over the deserialized request of the method's
      // own type (a protobuf message, single inheritance); null when the
      // call was refused before deserialization (thread pool exhausted).
      void* msg = methods->GetRecvMessage();
      if (msg != nullptr) {
        ids_ = DescribeRequestIds(*static_cast<const google::protobuf::Message*>(msg));
      }
      VLOG(1) << "rpc " << method_ << ids_ << " started";
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::Status s = methods->GetSendStatus();
      const absl::Duration took = absl::Now() - start_;
      if (s.ok()) {
        VLOG(1) << "rpc " << method_ << ids_ << " ok in " << took;
      } else {
        LOG(WARNING) << "rpc " << method_ << ids_ << " failed: " << CodeName(s.error_code()) << ": "
                     << EscapeForLog(s.error_message(), 1024) << " (" << took << ")";
      }
    }
    methods->Proceed();
  }

 private:
  const std::string method_;
  const absl::Time start_;
  std::string ids_;
};

class RpcLoggingFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new RpcLoggingInterceptor(info);
  }
};

}  // namespace

std::string DescribeRequestIds(const google::protobuf::Message& request) {
  std::string out;
  AppendIds(request, "", 0, &out);
  return out;
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
NewRpcLoggingInterceptorFactory() {
  return std::make_unique<RpcLoggingFactory>();
}

}  // namespace ublk_csi
