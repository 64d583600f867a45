// FakeKernel: an in-process ublk_drv for unit tests. It implements the
// ControlDevice/QueueChannel seam so Worker and Export run unchanged, and a
// block-device side (SubmitIo) so a test can read and write the "disk" from
// any thread and check data and result codes.
//
// How completions reach the worker's real io_uring: each fake QueueChannel
// makes one eventfd per tag. PrepFetch/PrepCommitAndFetch/PrepNeedGetData
// record the command in the fake (synchronously, under its mutex) and put an
// io_uring READ of 8 bytes from the tag's eventfd on the worker's ring with
// the caller's user_data. When the fake completes the command it stores the
// ublk result for the tag and writes the eventfd; the worker's CQE has res=8
// and TranslateCompletion(tag, 8) returns the stored result.
//
// Behaves like ublk_drv (6.1..7.x) in: device ids (given or any, EEXIST,
// ublks_max -> EACCES), states DEAD/LIVE/QUIESCED, flags masked by the
// feature set (6.1 silently drops USER_COPY), params validation (EINVAL; EACCES
// while LIVE), START_DEV waiting for every tag to be fetched, STOP_DEV aborting
// fetches with UBLK_IO_RES_ABORT, all three data modes (get-data: a WRITE
// first completes with UBLK_IO_RES_NEED_GET_DATA; a READ's data is taken
// from the commit's buffer; user copy: data moves through
// Read/WriteResponseData, and buffers passed with commands are refused; zero
// copy with UBLK_F_AUTO_BUF_REG: before a READ/WRITE is handed over, its
// buffer is registered in the buffer table of the ring that sent the tag's
// last FETCH/COMMIT, at the index that command named, and the commit
// unregisters it, so the target's READ_FIXED/WRITE_FIXED really move the
// data; a failed registration ends the request with EIO and leaves the
// fetch pending, as without UBLK_AUTO_BUF_REG_FALLBACK), quiesce when the last channel
// of a USER_RECOVERY device closes (else the device is aborted: in-flight and
// new I/O fail with EIO), the recovery handshake and REISSUE.
//
// Differs from the kernel:
// - Zero copy registers the request's user-space bytes (the fake's request
//   buffer), so fixed-buffer I/O addresses them by their user address
//   (QueueChannel::FixedBufferAddress); the kernel registers bio pages
//   addressed from 0. The fake registers a page-aligned stand-in and
//   copies a WRITE's payload into it before the fetch completes and a
//   READ's data out of it at commit (invisible to the server). EBUSY for a taken slot is only
//   detected against the fake's own registrations, not against buffers the server registered
//   itself; UBLK_AUTO_BUF_REG_FALLBACK is not emulated. When a channel
//   closes with buffers still registered the fake forgets them at once (the
//   kernel waits until the server's ring drops them): see
//   auto_buf_regs_at_close().
// - Misuse of an I/O command (double fetch, commit of a tag the server does
//   not own, a buffer in user-copy mode) is returned by the Prep* call; the
//   kernel reports it in the CQE.
// - START_DEV/END_USER_RECOVERY give up with DeadlineExceeded after
//   options.start_timeout; the kernel waits (interruptibly) forever.
// - DEL_DEV with channels still open fails with FailedPrecondition; the
//   kernel hangs until they are closed.
// - Opening a queue of a QUIESCED device before START_USER_RECOVERY fails;
//   the kernel lets the open succeed and fails the mmap (6.12) or, on 7.x,
//   lets a new server fetch without it. END_USER_RECOVERY without a START
//   first is EBUSY (6.12 would go LIVE on a stale completion).
// - OpenQueue is the open and the mmap in one: the mmap-owner check
//   (EINVAL) happens there.
// - RearmRecovery's helper task is modelled by its effect (every queue
//   ready, then the round reset on 7.x), not by real FETCHes.
// - No partition scan, no block-layer splitting or merging: one SubmitIo is
//   one request. The queue is chosen round-robin among fetched tags.
// - An aborted (server gone, no recovery) device stays LIVE in GET_DEV_INFO
//   until STOP_DEV/DEL_DEV, like 6.12; I/O to it fails with EIO.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "ublk/kernel.h"

namespace ublk {

// Feature masks of real kernels, for FakeKernelOptions.
inline constexpr uint64_t kFake61Features = UBLK_F_URING_CMD_COMP_IN_TASK | UBLK_F_NEED_GET_DATA |
                                            UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE;
inline constexpr uint64_t kFake65Features =
    kFake61Features | UBLK_F_UNPRIVILEGED_DEV | UBLK_F_CMD_IOCTL_ENCODE | UBLK_F_USER_COPY;
inline constexpr uint64_t kFake612Features = 0x1fe;  // what 6.12's GET_FEATURES returns
// What Debian's 7.x GET_FEATURES returns: includes UBLK_F_AUTO_BUF_REG.
inline constexpr uint64_t kFake7Features = 0x1fffff;

struct FakeKernelOptions {
  uint64_t features = kFake612Features;
  bool has_get_features = true;  // 6.5+
  bool accept_ioctl = true;      // 6.4+
  bool accept_legacy = true;     // CONFIG_BLKDEV_UBLK_LEGACY_OPCODES
  int ublks_max = 64;
  absl::Duration start_timeout = absl::Seconds(10);
  // Zero copy: registered request buffers start this many bytes past a page
  // boundary (the kernel's bvec may start anywhere the block layer's
  // dma_alignment allows; O_DIRECT then refuses it).
  size_t zero_copy_misalign = 0;
  // Recovery as before 6.16 (6.12's ublk_drv): START_USER_RECOVERY resets
  // the FETCH round and refuses (EINVAL) a device with no queue ready; the
  // mmap owner is reset only by START_USER_RECOVERY; a server killed with
  // part of a queue fetched never releases its char device. false: 7.x,
  // where releasing the char device resets the round and START only checks
  // the state.
  bool legacy_recovery = true;

  static FakeKernelOptions Linux61() {
    return {kFake61Features, false, false, true, 64, absl::Seconds(10)};
  }
  static FakeKernelOptions Linux65() {
    return {kFake65Features, true, true, true, 64, absl::Seconds(10)};
  }
  static FakeKernelOptions Linux612() { return {}; }
  static FakeKernelOptions Linux7() {
    FakeKernelOptions o{kFake7Features, true, true, true, 64, absl::Seconds(10)};
    o.legacy_recovery = false;
    return o;
  }
};

struct FakeIoResult {
  int32_t result = 0;  // bytes for READ/WRITE, 0, or -errno
  std::string data;    // READ: what came back
};

class FakeKernel {
 public:
  class Request;
  struct State;

  explicit FakeKernel(FakeKernelOptions options = {});
  ~FakeKernel();
  FakeKernel(const FakeKernel&) = delete;
  FakeKernel& operator=(const FakeKernel&) = delete;

  // A control device using `encoding`; many may be open at once. Each must
  // not outlive the FakeKernel... they share its state, so they may.
  std::unique_ptr<ControlDevice> OpenControl(CmdEncoding encoding);

  // Block I/O on /dev/ublkbN. `data` is the WRITE payload (len bytes).
  std::shared_ptr<Request> SubmitIoAsync(uint32_t dev_id, uint8_t op, uint64_t offset, uint32_t len,
                                         std::string data = {}, uint32_t flags = 0);
  // DeadlineExceeded if the request is not done in `timeout`. SubmitIo's
  // default is a liveness bound, not a speed check: generous, so an ASan
  // build on a loaded machine does not read as a hang.
  absl::StatusOr<FakeIoResult> Wait(const std::shared_ptr<Request>& request,
                                    absl::Duration timeout);
  absl::StatusOr<FakeIoResult> SubmitIo(uint32_t dev_id, uint8_t op, uint64_t offset, uint32_t len,
                                        std::string data = {},
                                        absl::Duration timeout = absl::Seconds(30));
  absl::StatusOr<FakeIoResult> Write(uint32_t dev_id, uint64_t offset, std::string data);
  absl::StatusOr<FakeIoResult> Read(uint32_t dev_id, uint64_t offset, uint32_t len);

  // Fault injection.
  // Where a recovering server is killed: the call that reaches the point
  // does the kernel's part of it, then fails with Internal (and so does
  // every later FETCH of this process), and the caller
  // drops what it holds as a dying process would (closing its channels).
  // Follow with NewProcess() before the next server starts.
  enum class CrashPoint {
    kNone,
    kAfterStartRecovery,  // START_USER_RECOVERY done
    kAfterMmap,           // OpenQueue (the mmap) done, nothing fetched
    kDuringFetch,         // `after_fetches` FETCH_REQs sent, the next fails
    kBeforeEndRecovery,   // every tag fetched, END_USER_RECOVERY not sent
    kAfterEndRecovery,    // END_USER_RECOVERY done
  };
  void CrashAt(CrashPoint point, int after_fetches = 0);
  // A new server process: what the previous one mapped is not its own
  // (ublk_ch_mmap compares mm).
  void NewProcess();
  void FailNextAddDevice(int err);     // e.g. ENOSPC, ENOMEM
  void VanishDevice(uint32_t dev_id);  // gone as if another process deleted it
  // Overwrites a device's ublksrv_flags, as if another server (or an older
  // version) had made it with that word.
  void SetUblksrvFlags(uint32_t dev_id, uint64_t value);
  // The next automatic buffer registration fails with `err` (e.g. ENOMEM):
  // the kernel then ends that request with EIO and the tag stays fetched.
  void FailNextAutoBufReg(int err);
  // The next user copy on the ring (PrepReadRequestData /
  // PrepWriteResponseData) copies nothing and completes with -EBADF.
  void FailNextUserCopyOnRing();

  // Inspection.
  std::optional<uint16_t> DeviceState(uint32_t dev_id) const;
  size_t device_count() const;
  int open_channels(uint32_t dev_id) const;
  // Requests handed to the server and not yet committed.
  int inflight(uint32_t dev_id) const;
  // GET_FEATURES commands received (any control device).
  int get_features_calls() const;
  // Whether a dead server still holds the char device (6.12, killed with a
  // queue partly fetched) and RearmRecovery() calls that did their work.
  bool HeldByDyingServer(uint32_t dev_id) const;
  int rearms() const;
  // Zero copy: request buffers registered so far; and how many were still
  // registered when their queue's channel closed (the real kernel waits for
  // the server's ring to drop those).
  int auto_buf_regs() const;
  // User-copy transfers made through the ring, and through the synchronous
  // ReadRequestData / WriteResponseData.
  int user_copies_on_ring() const;
  int user_copies_sync() const;
  // The pthread mutex every fake-kernel call takes (on the caller's thread,
  // where the real kernel takes no user-space lock): a test counting the
  // server's locks leaves it out.
  void* lock_handle() const;
  // What WorkerOptions/WorkerPoolOptions::ring_flags_allowed must be for a
  // worker serving this fake: with zero copy the fake registers request
  // buffers on the worker's ring from the thread that submits the I/O, which
  // a SINGLE_ISSUER ring refuses (EEXIST), so 0 there; else every flag.
  unsigned worker_ring_flags() const;
  int auto_buf_regs_at_close() const;

 private:
  std::shared_ptr<State> state_;
};

}  // namespace ublk
