// Test helper: captures every glog line while alive, so tests can count the
// transition lines a degraded mode promises (one per change, never one per I/O).
// Thread-safe.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "glog/logging.h"
#include "ublk/mutex.h"

namespace ublk_test {

class LogCapture : public google::LogSink {
 public:
  LogCapture() { google::AddLogSink(this); }
  ~LogCapture() override { google::RemoveLogSink(this); }

  void send(google::LogSeverity severity, const char*, const char*, int,
            const google::LogMessageTime&, const char* message, size_t message_len) override {
    ublk::MutexLock lock(&mu_);
    lines_.emplace_back(severity, std::string(message, message_len));
  }
  // Lines of exactly `severity` containing every one of `parts`.
  int Count(google::LogSeverity severity, const std::vector<std::string>& parts) const {
    ublk::MutexLock lock(&mu_);
    int n = 0;
    for (const auto& [sev, text] : lines_) {
      if (sev != severity) continue;
      bool all = true;
      for (const std::string& p : parts) all = all && absl::StrContains(text, p);
      if (all) ++n;
    }
    return n;
  }
  // The text of every line at `severity` or worse.
  std::vector<std::string> AtLeast(google::LogSeverity severity) const {
    ublk::MutexLock lock(&mu_);
    std::vector<std::string> out;
    for (const auto& [sev, text] : lines_) {
      if (sev >= severity) out.push_back(text);
    }
    return out;
  }
  // Count(), once it reaches `want` or `timeout` passes: for a line another
  // thread writes after the effect the test waited for.
  int CountWhenAtLeast(google::LogSeverity severity, const std::vector<std::string>& parts,
                       int want, absl::Duration timeout = absl::Seconds(5)) const {
    const absl::Time deadline = absl::Now() + timeout;
    int n = Count(severity, parts);
    while (n < want && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(2));
      n = Count(severity, parts);
    }
    return n;
  }
  int CountAtLeast(google::LogSeverity severity) const {
    return static_cast<int>(AtLeast(severity).size());
  }

 private:
  mutable ublk::Mutex mu_;
  std::vector<std::pair<google::LogSeverity, std::string>> lines_;
};

}  // namespace ublk_test
