#include "csi/health.h"

#include "absl/strings/str_cat.h"
#include "ublk/mutex.h"

namespace ublk_csi {

void Health::SetBackend(absl::Status status) {
  ublk::MutexLock l(&mu_);
  backend_ = std::move(status);
}

void Health::SetRecoveryPending(std::string why) {
  ublk::MutexLock l(&mu_);
  recovery_pending_ = std::move(why);
}

void Health::SetRecoveryDone() {
  ublk::MutexLock l(&mu_);
  recovery_pending_.clear();
}

absl::Status Health::Backend() const {
  ublk::MutexLock l(&mu_);
  return backend_;
}

void Health::SetServingCheck(std::function<absl::Status()> check) {
  ublk::MutexLock l(&mu_);
  serving_check_ = std::move(check);
}

absl::Status Health::Ready() const {
  std::function<absl::Status()> check;
  {
    ublk::MutexLock l(&mu_);
    if (!backend_.ok()) return backend_;
    if (!recovery_pending_.empty()) {
      return absl::UnavailableError(absl::StrCat("recovering: ", recovery_pending_));
    }
    check = serving_check_;
  }
  // Outside the lock: the check asks the volume manager, whose calls may
  // update this Health.
  if (check) return check();
  return absl::OkStatus();
}

}  // namespace ublk_csi
