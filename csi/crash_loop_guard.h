// CrashLoopGuard: notices a plugin that keeps dying while it recovers its
// volumes (an OOM kill, a crash in a recovery path) and makes the next start
// recover with the most conservative settings, so a loop converges instead
// of repeating. A counter file in the data dir counts the starts whose
// recovery did not complete: Begin() increments it (written atomically:
// temp file, fsync, rename, fsync dir) before recovery starts, Complete()
// resets it once every volume has an outcome. With `threshold` or more
// unfinished recoveries behind it, this start is conservative: main() then
// recovers one volume at a time with no buffer pools (HeapOnlyMemorySource)
// until recovery completes.
//
// Threads: Begin() once in main(); Complete() from the recovery thread that
// finishes; the gauges are thread-safe.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "csi/file_system.h"
#include "ublk/memory.h"

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace ublk_csi {

class CrashLoopGuard {
 public:
  static constexpr char kFileName[] = "recovery-attempts";
  static constexpr int kDefaultThreshold = 2;

  // Reads `data_dir`/recovery-attempts (missing: 0; unreadable or not a
  // number: treated as `threshold`, logged), writes it back incremented.
  // An error only if the counter cannot be written (the data dir is
  // checked writable before; no space is RESOURCE_EXHAUSTED). The counter
  // is written through `fs` (null: the real one; it must outlive the
  // guard). `registry` (nullable) gets
  //   ublk_csi_unfinished_recoveries  recoveries cut short before this start
  //   ublk_csi_conservative_recovery  1 while this start recovers
  //                                   conservatively
  static absl::StatusOr<std::unique_ptr<CrashLoopGuard>> Begin(const std::string& data_dir,
                                                               int threshold,
                                                               prometheus::Registry* registry,
                                                               FileSystem* fs = nullptr);

  // Unfinished recoveries before this start.
  int previous() const { return previous_; }
  bool conservative() const { return previous_ >= threshold_; }
  // Recovery completed: the counter goes back to 0 (and the conservative
  // gauge to 0). Idempotent.
  absl::Status Complete();

  // Reads the counter as Begin() would (for tests and logs).
  static int ReadCount(const std::string& data_dir, int threshold);

 private:
  CrashLoopGuard(std::string path, int previous, int threshold, FileSystem& fs)
      : path_(std::move(path)), previous_(previous), threshold_(threshold), fs_(fs) {}
  absl::Status Write(const std::string& text);

  const std::string path_;
  const int previous_;
  const int threshold_;
  FileSystem& fs_;
  std::atomic<bool> completed_{false};
  struct Gauges;
  std::shared_ptr<Gauges> gauges_;
};

// A MemorySource that refuses every Map() (as memory pressure would:
// ResourceExhausted) while heap-only is set, so the workers serve copy-mode
// I/O from heap buffers and create no buffer pool; heap allocations and,
// after SetHeapOnly(false), Map() go to `base`. The pools come back by
// themselves (a failed pool creation is retried on a later I/O).
class HeapOnlyMemorySource final : public ublk::MemorySource {
 public:
  HeapOnlyMemorySource(ublk::MemorySource& base, bool heap_only)
      : base_(base), heap_only_(heap_only) {}
  void SetHeapOnly(bool on) { heap_only_.store(on); }
  bool heap_only() const { return heap_only_.load(); }

  absl::StatusOr<void*> Map(size_t len) override;
  void Unmap(void* addr, size_t len) override { base_.Unmap(addr, len); }
  absl::StatusOr<void*> AllocateHeap(size_t len, size_t align) override {
    return base_.AllocateHeap(len, align);
  }
  void FreeHeap(void* block) override { base_.FreeHeap(block); }

 private:
  ublk::MemorySource& base_;
  std::atomic<bool> heap_only_;
};

}  // namespace ublk_csi
