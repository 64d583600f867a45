// Liveness that means something: the plugin is live when a *new* connection
// to its own CSI endpoint completes a call (GetPluginInfo) within a bound.
// That is what kubelet and the sidecars need, and what a wedged server (accept
// loop stopped, fds exhausted, every handler thread stuck) cannot do, while a
// constant "ok" or a Probe over an old connection still says healthy.
//
// Used by /healthz and by the CSI Probe RPC. A result is cached for a short
// time so frequent probes cost one dial; no caller waits longer than the
// bound, even while another caller's dial is running. Thread-safe. Kept apart
// from Health (readiness), which recovery updates.
#pragma once

#include <functional>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "csi/endpoint.h"
#include "ublk/clock.h"
#include "ublk/mutex.h"

namespace prometheus {
class Gauge;
class Registry;
}  // namespace prometheus

namespace ublk_csi {

class LivenessCheck {
 public:
  // One dial: a call over a new connection, bounded by `timeout`.
  using DialFn = std::function<absl::Status(absl::Duration timeout)>;

  // `registry` may be null; else ublk_csi_live (1/0) is registered.
  LivenessCheck(DialFn dial, const ublk::Clock* clock, absl::Duration timeout,
                absl::Duration cache_for, prometheus::Registry* registry);

  // OK when live; else UNAVAILABLE naming what failed. Logs one line per
  // transition (WARNING when it fails, INFO when it is back).
  absl::Status Check();

 private:
  DialFn dial_;
  const ublk::Clock* clock_;
  const absl::Duration timeout_;
  const absl::Duration cache_for_;
  prometheus::Gauge* live_gauge_ = nullptr;
  ublk::Mutex mu_;
  // One dial at a time: the others wait on dial_done_ (up to the timeout).
  // Not a std::timed_mutex: libstdc++'s try_lock_for is
  // pthread_mutex_clocklock, which clang-14's TSan does not intercept, so
  // every unlock looked like an unlock of an unlocked mutex.
  bool dialing_ ABSL_GUARDED_BY(mu_) = false;
  ublk::CondVar dial_done_;
  bool have_result_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time checked_at_ ABSL_GUARDED_BY(mu_);
  absl::Status last_ ABSL_GUARDED_BY(mu_);
};

// The real dial: GetPluginInfo over a new channel (its own subchannel pool, so
// never an existing connection) to `endpoint`, fail-fast, with a deadline.
absl::Status DialGetPluginInfo(const Endpoint& endpoint, absl::Duration timeout);

}  // namespace ublk_csi
