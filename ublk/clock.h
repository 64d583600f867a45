// The clock seam: every time-dependent decision in ublk/ and csi/ reads time
// through a Clock so tests can use a fake one. RealClock is thread-safe.
#pragma once

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace ublk {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
};

class RealClock final : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
};

}  // namespace ublk
