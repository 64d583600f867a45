// The real ublk kernel interface: control commands as io_uring URING_CMDs on
// /dev/ublk-control (SQE128 rings), I/O commands as URING_CMDs on the
// worker's ring against /dev/ublkcN, user copy by pread/pwrite of /dev/ublkcN.
// Thread-safe: each control command borrows a ring from a small pool, so a
// blocking START_DEV does not hold up other devices' commands.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "ublk/clock.h"
#include "ublk/kernel.h"
#include "ublk/mutex.h"
#include "ublk/ring.h"
#include "ublk/unique_fd.h"

namespace ublk {

inline constexpr char kUblkControlPath[] = "/dev/ublk-control";
inline constexpr char kUblksMaxPath[] = "/sys/module/ublk_drv/parameters/ublks_max";

class RealControlDevice final : public ControlDevice {
 public:
  // FailedPrecondition naming ublk_drv if `control_path` does not exist.
  // `clock` (nullable: a RealClock; must outlive the device) times the wait
  // for /dev/ublkcN to appear after ADD_DEV.
  static absl::StatusOr<std::unique_ptr<RealControlDevice>> Open(
      CmdEncoding encoding, const std::string& control_path = kUblkControlPath,
      const Clock* clock = nullptr);
  ~RealControlDevice() override;

  CmdEncoding encoding() const override { return encoding_; }
  absl::StatusOr<uint64_t> GetFeatures() override;
  absl::StatusOr<DeviceInfo> AddDevice(const DeviceInfo& want) override;
  absl::Status SetParams(uint32_t dev_id, const ublk_params& params) override;
  absl::StatusOr<ublk_params> GetParams(uint32_t dev_id) override;
  absl::Status StartDevice(uint32_t dev_id, pid_t pid) override;
  absl::Status StopDevice(uint32_t dev_id) override;
  absl::Status DeleteDevice(uint32_t dev_id) override;
  absl::StatusOr<DeviceInfo> GetDeviceInfo(uint32_t dev_id) override;
  absl::Status StartUserRecovery(uint32_t dev_id) override;
  absl::Status EndUserRecovery(uint32_t dev_id, pid_t pid) override;
  absl::Status RearmRecovery(uint32_t dev_id, uint16_t nr_queues, uint16_t queue_depth) override;
  absl::Status UpdateSize(uint32_t dev_id, uint64_t dev_sectors) override;
  absl::StatusOr<std::unique_ptr<QueueChannel>> OpenQueue(uint32_t dev_id, uint16_t q_id,
                                                          uint16_t queue_depth) override;

  // The open /dev/ublkcN of a device, shared by its queues: the kernel lets
  // the char device be opened only once at a time.
  struct CharDev;

 private:
  RealControlDevice(CmdEncoding encoding, UniqueFd fd, const Clock* clock)
      : encoding_(encoding), fd_(std::move(fd)), clock_(clock != nullptr ? *clock : real_clock_) {}

  // Runs one control command; returns the CQE result (>= 0) or the error
  // mapped with `what` as context.
  absl::StatusOr<int> Run(unsigned cmd_op, uint32_t dev_id, void* buf, uint16_t len, uint64_t data0,
                          absl::string_view what, int* errno_out = nullptr);
  unsigned Op(unsigned legacy_op, unsigned ioctl_op) const {
    return encoding_ == CmdEncoding::kIoctl ? ioctl_op : legacy_op;
  }
  // Opens /dev/ublkcN once for all queues, waiting (up to 2 s, through the
  // clock, with no lock held) for udev to create the node after ADD_DEV.
  absl::StatusOr<std::shared_ptr<CharDev>> GetCharDev(uint32_t dev_id);
  // Opens the char device, retrying ENOENT until `deadline`. No lock held.
  absl::StatusOr<int> OpenCharDev(uint32_t dev_id);

  const CmdEncoding encoding_;
  const UniqueFd fd_;
  const RealClock real_clock_;
  const Clock& clock_;
  ublk::Mutex mu_;
  ublk::CondVar opened_cv_;  // an open of opening_ finished
  // Devices whose char device a thread is opening right now (the kernel
  // lets it be opened once: a second thread waits for the first's result).
  absl::flat_hash_set<uint32_t> opening_ ABSL_GUARDED_BY(mu_);  // not absl::Mutex: see worker.h
  std::vector<std::unique_ptr<Ring>> idle_rings_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint32_t, std::weak_ptr<CharDev>> char_devs_ ABSL_GUARDED_BY(mu_);
};

// Reads /sys/module/ublk_drv/parameters/ublks_max (6.3+); NotFound where
// the module or parameter is missing.
absl::StatusOr<int> ReadUblksMax(const std::string& path = kUblksMaxPath);

}  // namespace ublk
