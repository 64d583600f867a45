#include "ublk/testing/fault_memory.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "ublk/mutex.h"

namespace ublk {

absl::StatusOr<std::string> FakeMemoryFiles::Read(const std::string& path) const {
  ublk::MutexLock lock(&mu_);
  ++reads_;
  auto it = files_.find(path);
  if (it == files_.end()) return absl::NotFoundError(absl::StrCat("reading ", path));
  return it->second;
}

void FakeMemoryFiles::Set(const std::string& path, const std::string& content) {
  ublk::MutexLock lock(&mu_);
  files_[path] = content;
}

void FakeMemoryFiles::Remove(const std::string& path) {
  ublk::MutexLock lock(&mu_);
  files_.erase(path);
}

int64_t FakeMemoryFiles::reads() const {
  ublk::MutexLock lock(&mu_);
  return reads_;
}

void FakeMemoryFiles::SetCgroupV2(const std::string& group, uint64_t max, uint64_t current,
                                  uint64_t high_events) {
  const std::string dir = "/sys/fs/cgroup" + group;
  Set("/proc/self/cgroup", absl::StrCat("0::", group, "\n"));
  Set(dir + "/memory.max", max == 0 ? std::string("max\n") : absl::StrCat(max, "\n"));
  Set(dir + "/memory.current", absl::StrCat(current, "\n"));
  Set(dir + "/memory.events",
      absl::StrCat("low 0\nhigh ", high_events, "\nmax 0\noom 0\noom_kill 0\n"));
}

}  // namespace ublk
