// StartupMarks: how long each step of the plugin's start took, for one INFO
// line an operator can read after a restart ("start-up: main reached 350ms
// after exec; flags 2ms, records dir 4ms, ..., serving 1.2s after exec").
// The steps are the ones recovery waits for: everything between exec and
// the first START_USER_RECOVERY is on the path of every volume's recovery.
//
// Threads: call from one thread (main's).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "ublk/clock.h"

namespace ublk_csi {

class StartupMarks {
 public:
  // Steps are timed from now. `clock` (nullable: a RealClock) must outlive this.
  explicit StartupMarks(const ublk::Clock* clock = nullptr);
  // How long before construction the process started (exec to main), if known.
  void SetBeforeMain(absl::Duration d) { before_main_ = d; }
  // Ends the step named `step`: it took the time since the previous mark
  // (or construction).
  void Mark(absl::string_view step);
  // "main reached 350ms after exec; flags 2ms, records dir 4ms; 360ms after exec"
  // (without a SetBeforeMain: "flags 2ms, records dir 4ms; 10ms after main").
  std::string Summary() const;

 private:
  const ublk::RealClock real_clock_;
  const ublk::Clock& clock_;
  const absl::Time start_;
  absl::Time last_;
  std::optional<absl::Duration> before_main_;
  std::vector<std::pair<std::string, absl::Duration>> steps_;
};

// The "starttime" field (22, clock ticks since boot) of a /proc/PID/stat
// line; InvalidArgument if the line does not have one.
absl::StatusOr<uint64_t> ParseProcStatStartTicks(absl::string_view stat);
// How long ago this process started (fork, i.e. about its exec for a
// process started by a shell's exec), from /proc/self/stat and
// CLOCK_BOOTTIME; 10 ms resolution.
absl::StatusOr<absl::Duration> TimeSinceProcessStart();

}  // namespace ublk_csi
