// The clock seam: every time-dependent decision in ublk/ and csi/ reads time
// through a Clock so tests can use a fake one, and every wait that is not on
// a condition (a retry's backoff) sleeps through it too, so a test with a
// fake clock neither waits nor asserts on wall time. RealClock is
// thread-safe.
#pragma once

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace ublk {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
  // Blocks the calling thread for `d` (a fake clock advances instead).
  virtual void SleepFor(absl::Duration d) const = 0;
};

class RealClock final : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
  void SleepFor(absl::Duration d) const override { absl::SleepFor(d); }
};

}  // namespace ublk
