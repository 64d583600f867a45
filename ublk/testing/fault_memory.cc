#include "ublk/testing/fault_memory.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "ublk/mutex.h"

namespace ublk {

bool FaultInjectingMemorySource::ShouldFail(int& plan) {
  if (plan < 0) return true;
  if (plan == 0) return false;
  --plan;
  return true;
}

absl::StatusOr<void*> FaultInjectingMemorySource::Map(size_t len) {
  {
    ublk::MutexLock lock(&mu_);
    ++map_calls_;
    if (ShouldFail(map_plan_)) {
      ++failed_map_calls_;
      // No message: see MemorySource (a message would allocate).
      return absl::Status(absl::StatusCode::kResourceExhausted, "");
    }
  }
  absl::StatusOr<void*> addr = base_.Map(len);
  if (addr.ok()) {
    ublk::MutexLock lock(&mu_);
    ++live_maps_;
  }
  return addr;
}

void FaultInjectingMemorySource::Unmap(void* addr, size_t len) {
  {
    ublk::MutexLock lock(&mu_);
    ++unmap_calls_;
    if (addr != nullptr) --live_maps_;
  }
  base_.Unmap(addr, len);
}

absl::StatusOr<void*> FaultInjectingMemorySource::AllocateHeap(size_t len, size_t align) {
  {
    ublk::MutexLock lock(&mu_);
    ++heap_calls_;
    if (ShouldFail(heap_plan_)) {
      ++failed_heap_calls_;
      return absl::Status(absl::StatusCode::kResourceExhausted, "");
    }
  }
  absl::StatusOr<void*> block = base_.AllocateHeap(len, align);
  if (block.ok()) {
    ublk::MutexLock lock(&mu_);
    ++live_heap_blocks_;
  }
  return block;
}

void FaultInjectingMemorySource::FreeHeap(void* block) {
  {
    ublk::MutexLock lock(&mu_);
    ++free_heap_calls_;
    if (block != nullptr) --live_heap_blocks_;
  }
  base_.FreeHeap(block);
}

void FaultInjectingMemorySource::FailMapAlways() {
  ublk::MutexLock lock(&mu_);
  map_plan_ = -1;
}
void FaultInjectingMemorySource::FailNextMaps(int n) {
  ublk::MutexLock lock(&mu_);
  map_plan_ = n > 0 ? n : 0;
}
void FaultInjectingMemorySource::HealMap() {
  ublk::MutexLock lock(&mu_);
  map_plan_ = 0;
}
void FaultInjectingMemorySource::FailHeapAlways() {
  ublk::MutexLock lock(&mu_);
  heap_plan_ = -1;
}
void FaultInjectingMemorySource::FailNextHeaps(int n) {
  ublk::MutexLock lock(&mu_);
  heap_plan_ = n > 0 ? n : 0;
}
void FaultInjectingMemorySource::HealHeap() {
  ublk::MutexLock lock(&mu_);
  heap_plan_ = 0;
}

int64_t FaultInjectingMemorySource::map_calls() const {
  ublk::MutexLock lock(&mu_);
  return map_calls_;
}
int64_t FaultInjectingMemorySource::failed_map_calls() const {
  ublk::MutexLock lock(&mu_);
  return failed_map_calls_;
}
int64_t FaultInjectingMemorySource::unmap_calls() const {
  ublk::MutexLock lock(&mu_);
  return unmap_calls_;
}
int64_t FaultInjectingMemorySource::heap_calls() const {
  ublk::MutexLock lock(&mu_);
  return heap_calls_;
}
int64_t FaultInjectingMemorySource::failed_heap_calls() const {
  ublk::MutexLock lock(&mu_);
  return failed_heap_calls_;
}
int64_t FaultInjectingMemorySource::free_heap_calls() const {
  ublk::MutexLock lock(&mu_);
  return free_heap_calls_;
}
int64_t FaultInjectingMemorySource::live_maps() const {
  ublk::MutexLock lock(&mu_);
  return live_maps_;
}
int64_t FaultInjectingMemorySource::live_heap_blocks() const {
  ublk::MutexLock lock(&mu_);
  return live_heap_blocks_;
}

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
