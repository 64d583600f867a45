#include "csi/startup_marks.h"

#include <time.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace ublk_csi {
namespace {

std::string Ms(absl::Duration d) { return absl::StrCat(absl::ToInt64Milliseconds(d), "ms"); }

}  // namespace

StartupMarks::StartupMarks(const ublk::Clock* clock)
    : clock_(clock != nullptr ? *clock : real_clock_), start_(clock_.Now()), last_(start_) {}

void StartupMarks::Mark(absl::string_view step) {
  const absl::Time now = clock_.Now();
  steps_.emplace_back(std::string(step), now - last_);
  last_ = now;
}

std::string StartupMarks::Summary() const {
  std::string out;
  if (before_main_.has_value())
    absl::StrAppend(&out, "main reached ", Ms(*before_main_), " after exec; ");
  for (size_t i = 0; i < steps_.size(); ++i) {
    absl::StrAppend(&out, i == 0 ? "" : ", ", steps_[i].first, " ", Ms(steps_[i].second));
  }
  const absl::Duration total = last_ - start_;
  if (before_main_.has_value()) {
    absl::StrAppend(&out, "; ", Ms(*before_main_ + total), " after exec");
  } else {
    absl::StrAppend(&out, "; ", Ms(total), " after main");
  }
  return out;
}

absl::StatusOr<uint64_t> ParseProcStatStartTicks(absl::string_view stat) {
  // "pid (comm) state ppid ...": comm may hold spaces and ')', so fields are
  // counted from the last ')'. starttime is field 22; field 3 (state) is the
  // first after it.
  const size_t paren = stat.rfind(')');
  if (paren == absl::string_view::npos) {
    return absl::InvalidArgumentError("/proc/self/stat: no ')' after the command name");
  }
  std::vector<absl::string_view> fields =
      absl::StrSplit(stat.substr(paren + 1), ' ', absl::SkipEmpty());
  constexpr size_t kStartTimeAfterParen = 22 - 3;
  uint64_t ticks = 0;
  if (fields.size() <= kStartTimeAfterParen ||
      !absl::SimpleAtoi(fields[kStartTimeAfterParen], &ticks)) {
    return absl::InvalidArgumentError("/proc/self/stat: no starttime field");
  }
  return ticks;
}

absl::StatusOr<absl::Duration> TimeSinceProcessStart() {
  std::ifstream in("/proc/self/stat");
  if (!in.is_open()) return absl::UnavailableError("cannot open /proc/self/stat");
  std::stringstream text;
  text << in.rdbuf();
  absl::StatusOr<uint64_t> ticks = ParseProcStatStartTicks(text.str());
  if (!ticks.ok()) return ticks.status();
  const long hz = ::sysconf(_SC_CLK_TCK);
  struct timespec now {};
  if (hz <= 0 || ::clock_gettime(CLOCK_BOOTTIME, &now) != 0) {
    return absl::UnavailableError("no clock tick rate or CLOCK_BOOTTIME");
  }
  const absl::Duration since_boot = absl::DurationFromTimespec(now);
  const absl::Duration started = absl::Seconds(static_cast<double>(*ticks) / hz);
  if (started > since_boot) return absl::ZeroDuration();
  return since_boot - started;
}

}  // namespace ublk_csi
