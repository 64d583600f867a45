// Liveness and readiness of the plugin, shared by the CSI Probe RPC and the
// HTTP /healthz and /readyz endpoints. Thread-safe.
#pragma once

#include <functional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "ublk/mutex.h"

namespace ublk_csi {

class Health {
 public:
  // Whether the storage backend (ublk kernel driver, data dir) is usable, and
  // if not, why. Starts as "not yet checked".
  void SetBackend(absl::Status status);
  // Volume recovery after start: ready is withheld until it is done.
  void SetRecoveryPending(std::string why);
  void SetRecoveryDone();
  // Whether every volume that should be served is (checked at each Ready(),
  // without Health's lock held): e.g. RecoveryManager::ServingStatus, which
  // says "N of M staged volumes not serving (...)". Set once, before the
  // servers start.
  void SetServingCheck(std::function<absl::Status()> check);

  // OK when the backend is usable, recovery is done and the serving check
  // passes; otherwise the reason.
  absl::Status Ready() const;
  // Backend status alone (Probe fails on an unusable backend even while
  // recovery would otherwise keep it merely "not ready").
  absl::Status Backend() const;

 private:
  // Recovery threads update this while gRPC threads read it.
  mutable ublk::Mutex mu_;
  absl::Status backend_ ABSL_GUARDED_BY(mu_) = absl::UnavailableError("backend not checked yet");
  std::string recovery_pending_ ABSL_GUARDED_BY(mu_);
  std::function<absl::Status()> serving_check_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ublk_csi
