// A Clock for tests: time moves only when the test says so. Thread-safe, so a
// test thread may Advance() while workers read Now().
#pragma once

#include <mutex>

#include "absl/base/thread_annotations.h"
#include "absl/time/time.h"
#include "ublk/clock.h"

namespace ublk {

class FakeClock final : public Clock {
 public:
  // Starts at an arbitrary fixed instant (not the epoch, so code that treats
  // a zero time as "unset" is not accidentally satisfied).
  FakeClock() : now_(absl::FromUnixSeconds(1'700'000'000)) {}
  explicit FakeClock(absl::Time start) : now_(start) {}

  absl::Time Now() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return now_;
  }
  // Returns at once, the time advanced by `d`: a backoff loop under test
  // runs its whole schedule without waiting.
  void SleepFor(absl::Duration d) const override {
    std::lock_guard<std::mutex> lock(mu_);
    now_ += d;
    ++sleeps_;
  }
  int sleeps() const {
    std::lock_guard<std::mutex> lock(mu_);
    return sleeps_;
  }
  void Advance(absl::Duration d) {
    std::lock_guard<std::mutex> lock(mu_);
    now_ += d;
  }
  void Set(absl::Time t) {
    std::lock_guard<std::mutex> lock(mu_);
    now_ = t;
  }

 private:
  // std::mutex, not absl::Mutex: Debian's abseil is not built with TSan, so
  // TSan cannot see absl::Mutex's happens-before edges and reports false races.
  mutable std::mutex mu_;
  mutable absl::Time now_ ABSL_GUARDED_BY(mu_);
  mutable int sleeps_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace ublk
