#include "ublk/fault_memory.h"

#include "absl/status/status.h"
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
    if (map_clock_ != nullptr && map_clock_->Now() >= map_fail_until_) map_clock_ = nullptr;
    if (map_clock_ != nullptr || ShouldFail(map_plan_)) {
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
  map_clock_ = nullptr;
}
void FaultInjectingMemorySource::FailNextMaps(int n) {
  ublk::MutexLock lock(&mu_);
  map_plan_ = n > 0 ? n : 0;
  map_clock_ = nullptr;
}
void FaultInjectingMemorySource::HealMap() {
  ublk::MutexLock lock(&mu_);
  map_plan_ = 0;
  map_clock_ = nullptr;
}
void FaultInjectingMemorySource::FailMapUntil(const Clock& clock, absl::Time until) {
  ublk::MutexLock lock(&mu_);
  map_plan_ = 0;
  map_clock_ = &clock;
  map_fail_until_ = until;
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

}  // namespace ublk
