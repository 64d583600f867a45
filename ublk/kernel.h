// The kernel seam: the ublk control device (/dev/ublk-control) and one
// device queue's I/O channel (/dev/ublkcN). RealControlDevice
// (ublk/kernel_real.h) talks to ublk_drv; FakeKernel
// (ublk/testing/fake_kernel.h) emulates it in-process for unit tests. Worker
// and Export code is identical on both.
//
// Threads: a ControlDevice is thread-safe (blocking calls). A QueueChannel is
// used only by the worker thread that serves its queue.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "ublk/uapi.h"

namespace ublk {

class Ring;

// How command numbers are encoded: legacy (6.1 has only these) or
// ioctl-encoded _IOWR('u', nr, ...) (6.4+; 6.8+ distro kernels often only these).
enum class CmdEncoding { kLegacy, kIoctl };
// How request data moves between kernel and server. The two copy modes hold
// a bounce buffer only while an I/O is served; zero copy (6.16+,
// UBLK_F_AUTO_BUF_REG) holds none: the kernel registers the request's pages
// in the worker ring's buffer table and the target does fixed-buffer I/O.
enum class CopyMode { kUserCopy, kGetData, kZeroCopy };

absl::string_view CmdEncodingName(CmdEncoding encoding);  // "ioctl" | "legacy"
// "user_copy" | "get_data" | "zero_copy"
absl::string_view CopyModeName(CopyMode mode);
absl::string_view DeviceStateName(uint16_t state);  // "DEAD" | "LIVE" | ...

inline constexpr uint32_t kAnyDevId = UINT32_MAX;

// ublksrv_ctrl_dev_info without the reserved fields.
struct DeviceInfo {
  uint32_t dev_id = kAnyDevId;
  uint16_t nr_hw_queues = 1;
  uint16_t queue_depth = 64;
  uint16_t state = UBLK_S_DEV_DEAD;
  uint32_t max_io_buf_bytes = 512 * 1024;
  uint64_t flags = 0;
  int32_t ublksrv_pid = 0;
  // The server's own word: the kernel stores it at ADD_DEV and hands it back
  // unread (ublk_cmd.h: "for ublksrv internal use, invisible to ublk driver").
  uint64_t ublksrv_flags = 0;
};

// Path of the block device / char device of a ublk device id.
std::string BlockDevicePath(uint32_t dev_id);  // /dev/ublkbN
std::string CharDevicePath(uint32_t dev_id);   // /dev/ublkcN

// Maps an errno from a ublk command to a Status whose message starts with
// `context`: ENOENT/ENODEV -> NotFound, EBUSY -> Unavailable, EEXIST ->
// AlreadyExists, EINVAL -> InvalidArgument, ENOMEM/ENOSPC -> ResourceExhausted,
// EACCES/EPERM -> PermissionDenied, EOPNOTSUPP/ENOTSUPP/ENOTTY ->
// Unimplemented; anything else via absl::ErrnoToStatus.
absl::Status UblkErrnoToStatus(int err, absl::string_view context);

// One queue of one device, served by one worker thread. Commands are
// prepared on the worker's Ring; each one's completion arrives there as a CQE
// with the given user_data, whose `res` the worker passes through
// TranslateCompletion(). Destroying the channel unmaps the descriptors and
// releases the char device (DEL_DEV hangs while they are mapped).
class QueueChannel {
 public:
  virtual ~QueueChannel() = default;

  virtual uint32_t dev_id() const = 0;
  virtual uint16_t q_id() const = 0;
  virtual uint16_t queue_depth() const = 0;

  // The descriptor of the request the kernel handed over on `tag`; valid from
  // a FETCH/COMMIT_AND_FETCH completion with UBLK_IO_RES_OK or
  // UBLK_IO_RES_NEED_GET_DATA until the tag's next commit.
  virtual const ublksrv_io_desc& Desc(uint16_t tag) const = 0;

  // `buf`: nullptr in user-copy and zero-copy mode; in get-data mode nullptr
  // for FETCH and for committing non-READ requests, else the buffer holding
  // a READ's data (the kernel copies it while the commit is submitted).
  // Zero copy: after SetAutoBufRegBase(base) every FETCH/COMMIT_AND_FETCH of
  // `tag` asks the kernel to register the next request's pages at index
  // base + tag of `ring`'s buffer table (commit unregisters the previous
  // one); the table must exist and the slot be free, or the kernel fails
  // that request with EIO (no UBLK_AUTO_BUF_REG_FALLBACK is asked for).
  // Errors: the SQ could not be had, or (fake kernel only) misuse that the
  // real kernel reports in the CQE.
  virtual absl::Status PrepFetch(Ring& ring, uint16_t tag, void* buf, uint64_t user_data) = 0;
  virtual absl::Status PrepCommitAndFetch(Ring& ring, uint16_t tag, int32_t result, void* buf,
                                          uint64_t user_data) = 0;
  // Zero copy: the first buffer-table index of this queue's tags (tag t uses
  // base + t). Call before the first PrepFetch.
  virtual void SetAutoBufRegBase(uint16_t index_base) = 0;
  // Zero copy: the address at which the registered buffer of `tag` starts in
  // fixed-buffer I/O (READ_FIXED/WRITE_FIXED address the request's bytes as
  // base..base+len). 0 for the kernel's registered request pages.
  virtual uint64_t FixedBufferAddress(uint16_t tag) const = 0;
  // Get-data mode: answers UBLK_IO_RES_NEED_GET_DATA with the buffer the
  // WRITE's data is copied into; completes with UBLK_IO_RES_OK once it is.
  virtual absl::Status PrepNeedGetData(Ring& ring, uint16_t tag, void* buf, uint64_t user_data) = 0;
  // Raw CQE res -> UBLK_IO_RES_OK / UBLK_IO_RES_NEED_GET_DATA /
  // UBLK_IO_RES_ABORT / -errno. Identity for the real kernel.
  virtual int32_t TranslateCompletion(uint16_t tag, int32_t raw_cqe_res) = 0;

  // User copy: the WRITE request's data into `buf`, and the READ response's
  // data from `buf`, at byte `offset` within the request.
  virtual absl::Status ReadRequestData(uint16_t tag, void* buf, size_t len, uint64_t offset) = 0;
  virtual absl::Status WriteResponseData(uint16_t tag, const void* buf, size_t len,
                                         uint64_t offset) = 0;
  // User copy on the ring: one SQE that copies the WRITE request's bytes
  // [0, len) into `buf` (PrepReadRequestData), or the READ response's bytes
  // [0, len) from `buf` (PrepWriteResponseData), completing with the bytes
  // copied or -errno; `buf` must stay valid until then. Errors: the SQ could
  // not be had, or (fake kernel only) misuse that the real kernel reports in
  // the CQE.
  virtual absl::Status PrepReadRequestData(Ring& ring, uint16_t tag, void* buf, size_t len,
                                           uint64_t user_data) = 0;
  virtual absl::Status PrepWriteResponseData(Ring& ring, uint16_t tag, const void* buf, size_t len,
                                             uint64_t user_data) = 0;
};

// /dev/ublk-control. Thread-safe; calls block until the kernel answers.
class ControlDevice {
 public:
  virtual ~ControlDevice() = default;

  virtual CmdEncoding encoding() const = 0;

  // UBLK_U_CMD_GET_FEATURES (6.5+). Unimplemented on kernels without it.
  virtual absl::StatusOr<uint64_t> GetFeatures() = 0;
  // ADD_DEV. want.dev_id = kAnyDevId lets the kernel pick. Returns what the
  // kernel made (its flags include the ones it adds itself).
  // AlreadyExists if the id is taken; ResourceExhausted naming ublks_max when
  // the module's device limit is reached.
  virtual absl::StatusOr<DeviceInfo> AddDevice(const DeviceInfo& want) = 0;
  virtual absl::Status SetParams(uint32_t dev_id, const ublk_params& params) = 0;
  virtual absl::StatusOr<ublk_params> GetParams(uint32_t dev_id) = 0;
  // Blocks until every tag of every queue is fetched and the disk is
  // registered (which reads the partition table through the device): never
  // call it on the thread that serves the device's queues.
  virtual absl::Status StartDevice(uint32_t dev_id, pid_t pid) = 0;
  virtual absl::Status StopDevice(uint32_t dev_id) = 0;
  // Every QueueChannel of the device must be closed first.
  virtual absl::Status DeleteDevice(uint32_t dev_id) = 0;
  virtual absl::StatusOr<DeviceInfo> GetDeviceInfo(uint32_t dev_id) = 0;
  // Only for a QUIESCED device whose old server is gone. Unavailable (EBUSY)
  // while the old server's char device is not released yet (its exit, or on
  // 7.x the release work, is still running): retry later. On 6.1-6.15
  // InvalidArgument (EINVAL) when no queue is ready, which is the state a
  // previous START_USER_RECOVERY leaves until every queue has FETCHed: see
  // RearmRecovery().
  virtual absl::Status StartUserRecovery(uint32_t dev_id) = 0;
  // Undoes what a recovery cut short after its START_USER_RECOVERY left on
  // kernels before 6.16 (ublk_ctrl_start_recovery refuses a device with
  // nr_queues_ready == 0, and ublk_ch_mmap refuses every process but the
  // one that mapped first after START): from a short-lived thread, opens the
  // char device, sends FETCH_REQ for every tag of every queue that is not
  // ready (no mmap: FETCH does not need it), then closes its ring and the
  // char device and exits, so the kernel sees a server that had every queue
  // ready and died; once its release is done (START_USER_RECOVERY stops
  // answering EBUSY) a normal recovery works, and that START resets the
  // mmap owner. Unavailable if the char device is still held (a server that
  // died with only part of a queue fetched never finishes exiting on 6.12:
  // only STOP_DEV releases it; see README "A device left unrecoverable").
  virtual absl::Status RearmRecovery(uint32_t dev_id, uint16_t nr_queues, uint16_t queue_depth) = 0;
  // Like StartDevice: blocks until all tags are re-fetched.
  virtual absl::Status EndUserRecovery(uint32_t dev_id, pid_t pid) = 0;
  // UBLK_U_CMD_UPDATE_SIZE (6.16+, UBLK_F_UPDATE_SIZE); Unimplemented where
  // the kernel lacks it.
  virtual absl::Status UpdateSize(uint32_t dev_id, uint64_t dev_sectors) = 0;

  // Opens queue `q_id` of a device that was added (and, for recovery, whose
  // START_USER_RECOVERY succeeded).
  virtual absl::StatusOr<std::unique_ptr<QueueChannel>> OpenQueue(uint32_t dev_id, uint16_t q_id,
                                                                  uint16_t queue_depth) = 0;
};

}  // namespace ublk
