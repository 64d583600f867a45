#include "csi/liveness.h"

#include "absl/strings/str_cat.h"
#include "csi.grpc.pb.h"
#include "csi/log_escape.h"
#include "glog/logging.h"
#include "grpcpp/grpcpp.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"
#include "ublk/mutex.h"

namespace ublk_csi {

LivenessCheck::LivenessCheck(DialFn dial, const ublk::Clock* clock, absl::Duration timeout,
                             absl::Duration cache_for, prometheus::Registry* registry)
    : dial_(std::move(dial)), clock_(clock), timeout_(timeout), cache_for_(cache_for) {
  if (registry != nullptr) {
    live_gauge_ = &prometheus::BuildGauge()
                       .Name("ublk_csi_live")
                       .Help(
                           "1 when a new connection to the CSI endpoint completed a call "
                           "within the liveness bound at the last check, else 0")
                       .Register(*registry)
                       .Add({});
    live_gauge_->Set(1);
  }
}

absl::Status LivenessCheck::Check() {
  const absl::Time asked = clock_->Now();
  {
    ublk::MutexLock l(&mu_);
    if (have_result_ && asked - checked_at_ < cache_for_) return last_;
  }
  {
    ublk::MutexLock l(&mu_);
    if (!dial_done_.WaitFor(l, absl::ToChronoMilliseconds(timeout_),
                            [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !dialing_; })) {
      return absl::UnavailableError(
          absl::StrCat("liveness: the previous self-check has not finished within ",
                       absl::FormatDuration(timeout_)));
    }
    // Another caller may have dialed while this one waited.
    if (have_result_ && checked_at_ >= asked) return last_;
    dialing_ = true;
  }
  absl::Status dialed = dial_(timeout_);
  absl::Status result = dialed.ok() ? absl::OkStatus()
                                    : absl::UnavailableError(absl::StrCat(
                                          "liveness: a new connection to the CSI endpoint did not "
                                          "complete a call within ",
                                          absl::FormatDuration(timeout_), ": ", dialed.message()));
  ublk::MutexLock l(&mu_);
  const bool was_ok = !have_result_ || last_.ok();
  if (was_ok && !result.ok()) {
    LOG(WARNING) << "not live: " << EscapeForLog(result.message(), 1024);
  } else if (!was_ok && result.ok()) {
    LOG(INFO) << "live again: a new connection to the CSI endpoint completes calls";
  }
  if (live_gauge_ != nullptr) live_gauge_->Set(result.ok() ? 1 : 0);
  have_result_ = true;
  checked_at_ = clock_->Now();
  last_ = result;
  dialing_ = false;
  dial_done_.NotifyAll();
  return result;
}

absl::Status DialGetPluginInfo(const Endpoint& endpoint, absl::Duration timeout) {
  grpc::ChannelArguments args;
  // A fresh connection: channels to one target otherwise share subchannels
  // (and so an old, still working connection) through the global pool.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto stub = csi::v1::Identity::NewStub(
      grpc::CreateCustomChannel(endpoint.GrpcTarget(), grpc::InsecureChannelCredentials(), args));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(timeout));
  csi::v1::GetPluginInfoResponse resp;
  grpc::Status s = stub->GetPluginInfo(&ctx, {}, &resp);
  if (s.ok()) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat("GetPluginInfo on ", endpoint.GrpcTarget(), ": code ",
                                             static_cast<int>(s.error_code()), ": ",
                                             s.error_message()));
}

}  // namespace ublk_csi
