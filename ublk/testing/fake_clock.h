// A Clock for tests: time moves only when the test says so. Thread-safe, so a
// test thread may Advance() while workers read Now().
#pragma once

#include <functional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/time/time.h"
#include "ublk/clock.h"
#include "ublk/mutex.h"

namespace ublk {

class FakeClock final : public Clock {
 public:
  // Starts at an arbitrary fixed instant (not the epoch, so code that treats
  // a zero time as "unset" is not accidentally satisfied).
  FakeClock() : now_(absl::FromUnixSeconds(1'700'000'000)) {}
  explicit FakeClock(absl::Time start) : now_(start) {}

  absl::Time Now() const override {
    ublk::MutexLock lock(&mu_);
    ++now_calls_;
    return now_;
  }
  // How often Now() was read (a hot path must not read it per I/O).
  int now_calls() const {
    ublk::MutexLock lock(&mu_);
    return now_calls_;
  }
  // Returns at once, the time advanced by `d`: a backoff loop under test
  // runs its whole schedule without waiting.
  void SleepFor(absl::Duration d) const override {
    ublk::MutexLock lock(&mu_);
    now_ += d;
    ++sleeps_;
  }
  int sleeps() const {
    ublk::MutexLock lock(&mu_);
    return sleeps_;
  }
  void Advance(absl::Duration d) {
    ublk::MutexLock lock(&mu_);
    now_ += d;
  }
  void Set(absl::Time t) {
    ublk::MutexLock lock(&mu_);
    now_ = t;
  }

 private:
  mutable ublk::Mutex mu_;
  mutable absl::Time now_ ABSL_GUARDED_BY(mu_);
  mutable int sleeps_ ABSL_GUARDED_BY(mu_) = 0;
  mutable int now_calls_ ABSL_GUARDED_BY(mu_) = 0;
};

// A FakeClock that runs `then` once, inside the first SleepFor that reaches
// `at` (on the sleeping thread): "the old server lets go at t0 + 100 ms",
// for a poll or backoff loop under test.
class ClockThatActsAt final : public Clock {
 public:
  ClockThatActsAt(absl::Time at, std::function<void()> then) : at_(at), then_(std::move(then)) {}
  absl::Time Now() const override { return fake_.Now(); }
  void SleepFor(absl::Duration d) const override {
    fake_.SleepFor(d);
    if (then_ && fake_.Now() >= at_) std::exchange(then_, nullptr)();
  }
  int sleeps() const { return fake_.sleeps(); }

 private:
  FakeClock fake_;
  const absl::Time at_;
  mutable std::function<void()> then_;
};

}  // namespace ublk
