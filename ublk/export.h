// Export: one ublk device serving one volume through a Target, its queues
// spread over one or more Workers. Owns the device's lifecycle:
//
//   Create -> kCreated --Start--> kRunning --Stop--> kStopped --Delete--> kDeleted
//   Recover -> kRecovering -> kRunning        kRunning --Detach--> kDetached
//   any failed step of Start/Recover -> kFailed (Delete still works)
//
// A call not allowed in the current state is FailedPrecondition. Methods are
// thread-safe but block on the kernel: call them from a control thread, never
// from a worker thread (START_DEV waits for the queues the workers serve).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "ublk/clock.h"
#include "ublk/kernel.h"
#include "ublk/mutex.h"
#include "ublk/target.h"
#include "ublk/worker.h"

namespace ublk {

struct ExportOptions {
  uint32_t dev_id = kAnyDevId;     // ask for this id (persisted ids stay stable)
  uint64_t size_bytes = 0;         // 0: the target's size
  uint8_t logical_bs_shift = 9;    // 9..12
  uint8_t physical_bs_shift = 12;  // logical..16
  bool discard = true;             // discard + write-zeroes, if the target can
  bool write_cache = true;         // volatile cache: the kernel sends FLUSH
  bool fua = true;
  uint32_t max_io_bytes = 512 * 1024;  // multiple of 4096
  uint16_t nr_queues = 1;
  uint16_t queue_depth = 64;
  bool user_recovery = false;
  bool user_recovery_reissue = false;  // requires user_recovery
  CopyMode copy_mode = CopyMode::kUserCopy;
  // Stored in the device's ublksrv_flags, so that a later process can tell
  // its own devices from other servers' before recovering one (0: none).
  uint64_t owner_tag = 0;
  // How long Stop() waits for the kernel to abort every fetch.
  absl::Duration stop_drain_timeout = absl::Seconds(10);
};

// How Export::Recover resumes a device whose previous recovery was cut
// short (README "Recovery cut short"): START_USER_RECOVERY refused with
// EBUSY (the old server's char device not released yet) is retried with
// exponential backoff until `release_wait` has passed; refused with EINVAL
// (6.1-6.15: a previous START left no queue ready) the device is re-armed
// once (ControlDevice::RearmRecovery) and START retried.
struct RecoverOptions {
  const Clock* clock = nullptr;  // nullable: a RealClock
  absl::Duration release_wait = absl::Seconds(10);
  // A retry is one START_USER_RECOVERY (a mutex and a flag test in the
  // kernel): cheap. The cap is how late a release is noticed; after a kill
  // of a 256-device server the first STARTs were refused ~20 times, and a
  // 100 ms cap added up to 100 ms per device still held.
  absl::Duration backoff_initial = absl::Milliseconds(1);
  absl::Duration backoff_max = absl::Milliseconds(10);
  // Re-arm a multi-queue device before its START as well: on 6.1-6.15 a
  // server killed after some queues were ready and before the others
  // leaves a device whose START_USER_RECOVERY oopses the kernel
  // (put_task_struct(NULL)); a re-arm readies the rest first. Costs one
  // open and a few FETCHes per multi-queue device.
  bool rearm_multi_queue = true;
};
// What resuming took (for the caller's metrics).
struct RecoverStats {
  int busy_retries = 0;  // START_USER_RECOVERY/re-arm refused with EBUSY, retried
  int rearms = 0;        // RearmRecovery calls that did their work
  bool gave_up = false;  // the char device stayed held past release_wait
};

// InvalidArgument naming the field.
absl::Status ValidateExportOptions(const ExportOptions& options);
// The ADD_DEV flag a copy mode needs (USER_COPY, NEED_GET_DATA, AUTO_BUF_REG).
uint64_t CopyModeFlags(CopyMode mode);
// The copy mode a device was created for, from its flags.
CopyMode CopyModeOfDevice(uint64_t device_flags);
// The copy mode to serve `target` in, given the kernel's choice (features'
// copy_mode) and its feature mask: the kernel's choice, except that a target
// that needs_user_buffer() gets user copy (UBLK_F_USER_COPY) or get-data
// instead of zero copy.
CopyMode CopyModeFor(CopyMode kernel_choice, uint64_t kernel_features, const Target& target);
// The ublk_params an export sets for `options` (size already resolved).
ublk_params ParamsFor(const ExportOptions& options, bool target_discard);

class Export {
 public:
  enum class State { kCreated, kRunning, kStopped, kDeleted, kRecovering, kFailed, kDetached };
  static const char* StateName(State state);

  // ADD_DEV + SET_PARAMS. `control`, `workers` must outlive the export.
  static absl::StatusOr<std::unique_ptr<Export>> Create(ControlDevice& control,
                                                        std::vector<Worker*> workers,
                                                        std::shared_ptr<Target> target,
                                                        const ExportOptions& options);
  // Re-attaches to a QUIESCED device left by a dead server:
  // START_USER_RECOVERY, GET_PARAMS, serve every queue, END_USER_RECOVERY.
  // The copy mode (zero copy for a UBLK_F_AUTO_BUF_REG device), queue count
  // and depth come from the device, not from what a new device would get.
  // A device whose char device stays held past `recover.release_wait`
  // is FailedPrecondition naming the way out (README "A device left
  // unrecoverable"); it is left as it is, never deleted.
  static absl::StatusOr<std::unique_ptr<Export>> Recover(
      ControlDevice& control, std::vector<Worker*> workers, std::shared_ptr<Target> target,
      uint32_t dev_id, const RecoverOptions& recover = {}, RecoverStats* stats = nullptr);
  // Drops the queues without stopping the device (see Detach()).
  ~Export();

  // Opens the queues, hands them to the workers, START_DEV.
  absl::Status Start();
  // STOP_DEV, then waits for the workers to drain the queues.
  absl::Status Stop();
  // Closes the queues (DEL_DEV hangs while they are mapped), then DEL_DEV.
  absl::Status Delete();
  // Drops the queues without STOP_DEV: a USER_RECOVERY device stays
  // quiesced for a later Recover() (don't STOP_DEV under mounted, dirty
  // filesystems: it can deadlock).
  absl::Status Detach();
  // UPDATE_SIZE while running (Unimplemented before 6.16), SET_PARAMS
  // before Start. The target must be at least that large.
  absl::Status Resize(uint64_t new_size_bytes);

  State state() const;
  uint32_t dev_id() const { return info_.dev_id; }
  const DeviceInfo& device_info() const { return info_; }
  CopyMode copy_mode() const { return copy_mode_; }
  uint64_t size_bytes() const;
  std::string block_device_path() const { return BlockDevicePath(info_.dev_id); }

 private:
  Export(ControlDevice& control, std::vector<Worker*> workers, std::shared_ptr<Target> target,
         const DeviceInfo& info, CopyMode mode, uint64_t size, ExportOptions options);
  absl::Status ServeQueues() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Returns true if every queue drained.
  bool RemoveQueues(absl::Duration timeout) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status WrongState(absl::string_view op) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  ControlDevice& control_;
  const std::vector<Worker*> workers_;
  const std::shared_ptr<Target> target_;
  const DeviceInfo info_;
  const CopyMode copy_mode_;
  const ExportOptions options_;

  mutable ublk::Mutex mu_;
  State state_ ABSL_GUARDED_BY(mu_) = State::kCreated;
  uint64_t size_bytes_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<Worker*, Worker::QueueId>> queues_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ublk
