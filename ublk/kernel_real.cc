#include "ublk/kernel_real.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "glog/logging.h"
#include "ublk/mutex.h"
#include "ublk/status_macros.h"

namespace ublk {
namespace {

constexpr unsigned kControlRingEntries = 4;
// udev (or devtmpfs) creates /dev/ublkcN shortly after ADD_DEV.
constexpr absl::Duration kCharDevOpenWait = absl::Seconds(2);
constexpr absl::Duration kCharDevOpenRetry = absl::Milliseconds(10);

size_t PageSize() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }
size_t RoundUp(size_t n, size_t to) { return (n + to - 1) / to * to; }

DeviceInfo FromKernel(const ublksrv_ctrl_dev_info& k) {
  DeviceInfo info;
  info.dev_id = k.dev_id;
  info.nr_hw_queues = k.nr_hw_queues;
  info.queue_depth = k.queue_depth;
  info.state = k.state;
  info.max_io_buf_bytes = k.max_io_buf_bytes;
  info.flags = k.flags;
  info.ublksrv_pid = k.ublksrv_pid;
  info.ublksrv_flags = k.ublksrv_flags;
  return info;
}

// Fills a 64-byte URING_CMD SQE for an I/O command.
void PrepIoCmd(io_uring_sqe* sqe, int fd, unsigned cmd_op, uint16_t q_id, uint16_t tag,
               int32_t result, void* buf, uint64_t user_data) {
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = fd;
  sqe->cmd_op = cmd_op;
  sqe->user_data = user_data;
  ublksrv_io_cmd cmd{};
  cmd.q_id = q_id;
  cmd.tag = tag;
  cmd.result = result;
  cmd.addr = reinterpret_cast<uintptr_t>(buf);
  static_assert(sizeof(cmd) <= 16, "ublksrv_io_cmd must fit a 64-byte SQE");
  std::memcpy(sqe->cmd, &cmd, sizeof(cmd));
}

}  // namespace

struct RealControlDevice::CharDev {
  uint32_t dev_id;
  UniqueFd fd;
};

namespace {

class RealQueueChannel final : public QueueChannel {
 public:
  RealQueueChannel(std::shared_ptr<RealControlDevice::CharDev> dev, CmdEncoding encoding,
                   uint16_t q_id, uint16_t depth, const ublksrv_io_desc* descs, size_t map_len)
      : dev_(std::move(dev)),
        encoding_(encoding),
        q_id_(q_id),
        depth_(depth),
        descs_(descs),
        map_len_(map_len) {}
  ~RealQueueChannel() override { munmap(const_cast<ublksrv_io_desc*>(descs_), map_len_); }

  uint32_t dev_id() const override { return dev_->dev_id; }
  uint16_t q_id() const override { return q_id_; }
  uint16_t queue_depth() const override { return depth_; }
  const ublksrv_io_desc& Desc(uint16_t tag) const override { return descs_[tag]; }

  absl::Status PrepFetch(Ring& ring, uint16_t tag, void* buf, uint64_t user_data) override {
    return Prep(ring, UBLK_IO_FETCH_REQ, UBLK_U_IO_FETCH_REQ, tag, -1, buf, user_data,
                /*auto_reg=*/true);
  }
  absl::Status PrepCommitAndFetch(Ring& ring, uint16_t tag, int32_t result, void* buf,
                                  uint64_t user_data) override {
    return Prep(ring, UBLK_IO_COMMIT_AND_FETCH_REQ, UBLK_U_IO_COMMIT_AND_FETCH_REQ, tag, result,
                buf, user_data, /*auto_reg=*/true);
  }
  absl::Status PrepNeedGetData(Ring& ring, uint16_t tag, void* buf, uint64_t user_data) override {
    return Prep(ring, UBLK_IO_NEED_GET_DATA, UBLK_U_IO_NEED_GET_DATA, tag, 0, buf, user_data,
                /*auto_reg=*/false);
  }
  void SetAutoBufRegBase(uint16_t index_base) override { auto_base_ = index_base; }
  // The kernel registers the request's bio pages as a bvec buffer that
  // fixed-buffer I/O addresses from 0.
  uint64_t FixedBufferAddress(uint16_t) const override { return 0; }
  int32_t TranslateCompletion(uint16_t, int32_t raw_cqe_res) override { return raw_cqe_res; }

  absl::Status ReadRequestData(uint16_t tag, void* buf, size_t len, uint64_t offset) override {
    char* p = static_cast<char*>(buf);
    uint64_t pos = UserCopyOffset(q_id_, tag) + offset;
    while (len > 0) {
      ssize_t n = pread(dev_->fd.get(), p, len, static_cast<off_t>(pos));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return Error("pread", tag, n < 0 ? errno : EIO);
      p += n;
      pos += static_cast<uint64_t>(n);
      len -= static_cast<size_t>(n);
    }
    return absl::OkStatus();
  }
  absl::Status WriteResponseData(uint16_t tag, const void* buf, size_t len,
                                 uint64_t offset) override {
    const char* p = static_cast<const char*>(buf);
    uint64_t pos = UserCopyOffset(q_id_, tag) + offset;
    while (len > 0) {
      ssize_t n = pwrite(dev_->fd.get(), p, len, static_cast<off_t>(pos));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return Error("pwrite", tag, n < 0 ? errno : EIO);
      p += n;
      pos += static_cast<uint64_t>(n);
      len -= static_cast<size_t>(n);
    }
    return absl::OkStatus();
  }
  absl::Status PrepReadRequestData(Ring& ring, uint16_t tag, void* buf, size_t len,
                                   uint64_t user_data) override {
    return PrepCopy(ring, tag, IORING_OP_READ, buf, len, user_data);
  }
  absl::Status PrepWriteResponseData(Ring& ring, uint16_t tag, const void* buf, size_t len,
                                     uint64_t user_data) override {
    return PrepCopy(ring, tag, IORING_OP_WRITE, buf, len, user_data);
  }

 private:
  // A READ or WRITE of the tag's window of /dev/ublkcN (what pread/pwrite
  // above do synchronously).
  absl::Status PrepCopy(Ring& ring, uint16_t tag, uint8_t opcode, const void* buf, size_t len,
                        uint64_t user_data) {
    io_uring_sqe* sqe = ring.GetSqe();
    if (sqe == nullptr) {
      return absl::UnavailableError(absl::StrCat("ublk device ", dev_->dev_id, " queue ", q_id_,
                                                 " tag ", tag, ": no free SQE on the ring"));
    }
    io_uring_prep_rw(opcode, sqe, dev_->fd.get(), buf, static_cast<unsigned>(len),
                     UserCopyOffset(q_id_, tag));
    sqe->user_data = user_data;
    return absl::OkStatus();
  }
  absl::Status Prep(Ring& ring, unsigned legacy_op, unsigned ioctl_op, uint16_t tag, int32_t result,
                    void* buf, uint64_t user_data, bool auto_reg) {
    io_uring_sqe* sqe = ring.GetSqe();
    if (sqe == nullptr) {
      return absl::UnavailableError(absl::StrCat("ublk device ", dev_->dev_id, " queue ", q_id_,
                                                 " tag ", tag, ": no free SQE on the ring"));
    }
    PrepIoCmd(sqe, dev_->fd.get(), encoding_ == CmdEncoding::kIoctl ? ioctl_op : legacy_op, q_id_,
              tag, result, buf, user_data);
    if (auto_reg && auto_base_ >= 0) {
      sqe->addr = AutoBufRegSqeAddr(static_cast<uint16_t>(auto_base_ + tag));
    }
    return absl::OkStatus();
  }
  absl::Status Error(absl::string_view what, uint16_t tag, int err) const {
    return UblkErrnoToStatus(
        err, absl::StrCat(what, " ", CharDevicePath(dev_->dev_id), " queue ", q_id_, " tag ", tag));
  }

  const std::shared_ptr<RealControlDevice::CharDev> dev_;
  const CmdEncoding encoding_;
  const uint16_t q_id_;
  const uint16_t depth_;
  const ublksrv_io_desc* const descs_;
  const size_t map_len_;
  int auto_base_ = -1;  // zero copy: first buffer-table index; worker thread only
};

}  // namespace

absl::StatusOr<std::unique_ptr<RealControlDevice>> RealControlDevice::Open(
    CmdEncoding encoding, const std::string& control_path, const Clock* clock) {
  int fd = open(control_path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT || err == ENODEV || err == ENXIO) {
      return absl::FailedPreconditionError(
          absl::StrCat(control_path,
                       " does not exist: the kernel module ublk_drv is not loaded (load it with "
                       "modprobe ublk_drv; the kernel needs CONFIG_BLK_DEV_UBLK)"));
    }
    return UblkErrnoToStatus(err,
                             absl::StrCat("open ", control_path, " (ublk_drv control device)"));
  }
  std::unique_ptr<RealControlDevice> dev(new RealControlDevice(encoding, UniqueFd(fd), clock));
  // Fail now, not at the first command, if this kernel's io_uring lacks SQE128.
  ASSIGN_OR_RETURN(auto ring, Ring::Create(kControlRingEntries, IORING_SETUP_SQE128));
  {
    ublk::MutexLock lock(&dev->mu_);
    dev->idle_rings_.push_back(std::move(ring));
  }
  return dev;
}

RealControlDevice::~RealControlDevice() = default;

absl::StatusOr<int> RealControlDevice::Run(unsigned cmd_op, uint32_t dev_id, void* buf,
                                           uint16_t len, uint64_t data0, absl::string_view what,
                                           int* errno_out) {
  std::unique_ptr<Ring> ring;
  {
    ublk::MutexLock lock(&mu_);
    if (!idle_rings_.empty()) {
      ring = std::move(idle_rings_.back());
      idle_rings_.pop_back();
    }
  }
  if (ring == nullptr) {
    ASSIGN_OR_RETURN(ring, Ring::Create(kControlRingEntries, IORING_SETUP_SQE128));
  }
  io_uring_sqe* sqe = ring->GetSqe();
  if (sqe == nullptr) return absl::InternalError(absl::StrCat(what, ": no SQE on control ring"));
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = fd_.get();
  sqe->cmd_op = cmd_op;
  ublksrv_ctrl_cmd cmd{};
  cmd.dev_id = dev_id;
  cmd.queue_id = static_cast<uint16_t>(-1);
  cmd.len = len;
  cmd.addr = reinterpret_cast<uintptr_t>(buf);
  cmd.data[0] = data0;
  std::memcpy(sqe->cmd, &cmd, sizeof(cmd));

  int res = 0;
  absl::Status status = ring->Submit().status();
  if (status.ok()) {
    io_uring_cqe* cqe = nullptr;
    int ret;
    do {
      ret = io_uring_wait_cqe(ring->raw(), &cqe);
    } while (ret == -EINTR);
    if (ret < 0) {
      status = absl::ErrnoToStatus(-ret, absl::StrCat(what, ": waiting for the completion"));
    } else {
      res = cqe->res;
      io_uring_cqe_seen(ring->raw(), cqe);
    }
  }
  if (!status.ok()) return status;  // the ring may hold a stale SQE: drop it
  {
    ublk::MutexLock lock(&mu_);
    idle_rings_.push_back(std::move(ring));
  }
  if (res < 0) {
    if (errno_out != nullptr) *errno_out = -res;
    return UblkErrnoToStatus(-res, what);
  }
  return res;
}

absl::StatusOr<uint64_t> RealControlDevice::GetFeatures() {
  uint64_t features = 0;
  // There is no legacy number for GET_FEATURES: always ioctl-encoded.
  auto res = Run(UBLK_U_CMD_GET_FEATURES, 0, &features, UBLK_FEATURES_LEN, 0, "ublk GET_FEATURES");
  if (!res.ok()) {
    // 6.1 answers an unknown command with ENODEV (it looks the device up first)
    // or EOPNOTSUPP: either way the command does not exist there.
    return absl::UnimplementedError(absl::StrCat("ublk GET_FEATURES not supported by this kernel (",
                                                 res.status().message(), ")"));
  }
  return features;
}

absl::StatusOr<DeviceInfo> RealControlDevice::AddDevice(const DeviceInfo& want) {
  ublksrv_ctrl_dev_info info{};
  info.dev_id = want.dev_id;
  info.nr_hw_queues = want.nr_hw_queues;
  info.queue_depth = want.queue_depth;
  info.max_io_buf_bytes = want.max_io_buf_bytes;
  info.flags = want.flags;
  info.ublksrv_pid = want.ublksrv_pid != 0 ? want.ublksrv_pid : getpid();
  info.ublksrv_flags = want.ublksrv_flags;
  std::string what = want.dev_id == kAnyDevId ? std::string("ublk ADD_DEV (any id)")
                                              : absl::StrCat("ublk ADD_DEV id ", want.dev_id);
  int err = 0;
  auto res = Run(Op(UBLK_CMD_ADD_DEV, UBLK_U_CMD_ADD_DEV), want.dev_id, &info, sizeof(info), 0,
                 what, &err);
  if (!res.ok()) {
    if (err == EACCES) {
      // 6.3-6.14 refuse ADD_DEV with EACCES once ublks_max devices exist.
      auto max = ReadUblksMax();
      return absl::ResourceExhaustedError(absl::StrCat(
          what, ": refused, device limit reached (ublk_drv module parameter ublks_max=",
          max.ok() ? absl::StrCat(*max) : std::string("?"), "): ", res.status().message()));
    }
    return res.status();
  }
  return FromKernel(info);
}

absl::Status RealControlDevice::SetParams(uint32_t dev_id, const ublk_params& params) {
  ublk_params p = params;
  p.len = sizeof(p);
  return Run(Op(UBLK_CMD_SET_PARAMS, UBLK_U_CMD_SET_PARAMS), dev_id, &p, sizeof(p), 0,
             absl::StrCat("ublk SET_PARAMS device ", dev_id))
      .status();
}

absl::StatusOr<ublk_params> RealControlDevice::GetParams(uint32_t dev_id) {
  ublk_params p{};
  p.len = sizeof(p);
  RETURN_IF_ERROR(Run(Op(UBLK_CMD_GET_PARAMS, UBLK_U_CMD_GET_PARAMS), dev_id, &p, sizeof(p), 0,
                      absl::StrCat("ublk GET_PARAMS device ", dev_id))
                      .status());
  return p;
}

absl::Status RealControlDevice::StartDevice(uint32_t dev_id, pid_t pid) {
  return Run(Op(UBLK_CMD_START_DEV, UBLK_U_CMD_START_DEV), dev_id, nullptr, 0,
             static_cast<uint64_t>(pid), absl::StrCat("ublk START_DEV device ", dev_id))
      .status();
}

absl::Status RealControlDevice::StopDevice(uint32_t dev_id) {
  return Run(Op(UBLK_CMD_STOP_DEV, UBLK_U_CMD_STOP_DEV), dev_id, nullptr, 0, 0,
             absl::StrCat("ublk STOP_DEV device ", dev_id))
      .status();
}

absl::Status RealControlDevice::DeleteDevice(uint32_t dev_id) {
  return Run(Op(UBLK_CMD_DEL_DEV, UBLK_U_CMD_DEL_DEV), dev_id, nullptr, 0, 0,
             absl::StrCat("ublk DEL_DEV device ", dev_id))
      .status();
}

absl::StatusOr<DeviceInfo> RealControlDevice::GetDeviceInfo(uint32_t dev_id) {
  ublksrv_ctrl_dev_info info{};
  RETURN_IF_ERROR(Run(Op(UBLK_CMD_GET_DEV_INFO, UBLK_U_CMD_GET_DEV_INFO), dev_id, &info,
                      sizeof(info), 0, absl::StrCat("ublk GET_DEV_INFO device ", dev_id))
                      .status());
  return FromKernel(info);
}

absl::Status RealControlDevice::StartUserRecovery(uint32_t dev_id) {
  return Run(Op(UBLK_CMD_START_USER_RECOVERY, UBLK_U_CMD_START_USER_RECOVERY), dev_id, nullptr, 0,
             0, absl::StrCat("ublk START_USER_RECOVERY device ", dev_id))
      .status();
}

absl::Status RealControlDevice::EndUserRecovery(uint32_t dev_id, pid_t pid) {
  return Run(Op(UBLK_CMD_END_USER_RECOVERY, UBLK_U_CMD_END_USER_RECOVERY), dev_id, nullptr, 0,
             static_cast<uint64_t>(pid), absl::StrCat("ublk END_USER_RECOVERY device ", dev_id))
      .status();
}

absl::Status RealControlDevice::UpdateSize(uint32_t dev_id, uint64_t dev_sectors) {
  auto res = Run(UBLK_U_CMD_UPDATE_SIZE, dev_id, nullptr, 0, dev_sectors,
                 absl::StrCat("ublk UPDATE_SIZE device ", dev_id));
  if (!res.ok() && absl::IsUnimplemented(res.status())) {
    return absl::UnimplementedError(
        absl::StrCat("resizing ublk device ", dev_id,
                     " needs UBLK_U_CMD_UPDATE_SIZE (Linux 6.16+): ", res.status().message()));
  }
  return res.status();
}

absl::StatusOr<int> RealControlDevice::OpenCharDev(uint32_t dev_id) {
  const std::string path = CharDevicePath(dev_id);
  const absl::Time deadline = clock_.Now() + kCharDevOpenWait;
  for (;;) {
    int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd >= 0) return fd;
    const int err = errno;
    if (err == ENOENT && clock_.Now() < deadline) {
      clock_.SleepFor(kCharDevOpenRetry);
      continue;
    }
    if (err == EBUSY) {
      return absl::UnavailableError(absl::StrCat(
          "open ", path, ": busy: another ublk server still holds ublk device ", dev_id));
    }
    return UblkErrnoToStatus(err, absl::StrCat("open ", path));
  }
}

absl::StatusOr<std::shared_ptr<RealControlDevice::CharDev>> RealControlDevice::GetCharDev(
    uint32_t dev_id) {
  {
    ublk::MutexLock lock(&mu_);
    for (;;) {
      auto it = char_devs_.find(dev_id);
      if (it != char_devs_.end()) {
        if (auto dev = it->second.lock()) return dev;
      }
      if (!opening_.contains(dev_id)) break;
      // Another queue of this device is being opened: its fd is ours too.
      opened_cv_.Wait(lock);
    }
    opening_.insert(dev_id);
  }
  // The open may wait for udev: every other device's commands go on.
  absl::StatusOr<int> fd = OpenCharDev(dev_id);
  std::shared_ptr<CharDev> dev;
  if (fd.ok()) dev = std::make_shared<CharDev>(CharDev{dev_id, UniqueFd(*fd)});
  {
    ublk::MutexLock lock(&mu_);
    opening_.erase(dev_id);
    if (dev != nullptr) char_devs_[dev_id] = dev;
  }
  opened_cv_.NotifyAll();
  if (!fd.ok()) return fd.status();
  return dev;
}

absl::Status RealControlDevice::RearmRecovery(uint32_t dev_id, uint16_t nr_queues,
                                              uint16_t queue_depth) {
  if (nr_queues == 0 || nr_queues > kMaxQueues || queue_depth == 0 ||
      queue_depth > kMaxQueueDepth) {
    return absl::InvalidArgumentError(absl::StrCat("ublk device ", dev_id, ": cannot re-arm ",
                                                   nr_queues, " queue(s) x ", queue_depth));
  }
  // A thread of its own: the kernel makes the task whose FETCHes readied a
  // queue that queue's daemon, and lets START_USER_RECOVERY reinit the queue
  // once that task is exiting (ubq_daemon_is_dying). The thread's FETCHes are
  // cancelled when its ring closes and it exits, as a dead server's are.
  absl::Status result;
  int accepted = 0;
  std::thread rearm([&] {
    absl::StatusOr<int> fd = OpenCharDev(dev_id);
    if (!fd.ok()) {
      result = fd.status();
      return;
    }
    UniqueFd chr(*fd);
    unsigned entries = 1;
    while (entries < static_cast<unsigned>(nr_queues) * queue_depth) entries <<= 1;
    absl::StatusOr<std::unique_ptr<Ring>> ring = Ring::Create(entries);
    if (!ring.ok()) {
      result = ring.status();
      return;
    }
    const unsigned op = encoding_ == CmdEncoding::kIoctl ? UBLK_U_IO_FETCH_REQ : UBLK_IO_FETCH_REQ;
    for (uint16_t q = 0; q < nr_queues; ++q) {
      for (uint16_t tag = 0; tag < queue_depth; ++tag) {
        io_uring_sqe* sqe = (*ring)->GetSqe();
        if (sqe == nullptr) {
          result = absl::InternalError(absl::StrCat("ublk device ", dev_id, ": re-arm: no SQE"));
          return;
        }
        PrepIoCmd(sqe, chr.get(), op, q, tag, -1, nullptr, (uint64_t{q} << 16) | tag);
      }
    }
    absl::StatusOr<int> submitted = (*ring)->Submit();
    if (!submitted.ok()) {
      result = submitted.status();
      return;
    }
    // A queue that is ready already (or owned by a dead task) refuses its
    // FETCHes at once: EINVAL/EBUSY CQEs. The accepted ones stay pending
    // until the ring closes below.
    int refused = 0;
    io_uring_cqe* cqe = nullptr;
    while (io_uring_peek_cqe((*ring)->raw(), &cqe) == 0) {
      ++refused;
      io_uring_cqe_seen((*ring)->raw(), cqe);
    }
    accepted = *submitted - refused;
  });
  rearm.join();
  if (!result.ok()) {
    return absl::Status(result.code(), absl::StrCat("ublk device ", dev_id,
                                                    ": re-arming recovery: ", result.message()));
  }
  LOG(INFO) << "ublk device " << dev_id << ": re-armed for recovery (" << accepted << " of "
            << nr_queues * queue_depth << " FETCHes taken by the kernel)";
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<QueueChannel>> RealControlDevice::OpenQueue(uint32_t dev_id,
                                                                           uint16_t q_id,
                                                                           uint16_t queue_depth) {
  if (queue_depth == 0 || queue_depth > kMaxQueueDepth) {
    return absl::InvalidArgumentError(
        absl::StrCat("ublk device ", dev_id, " queue ", q_id, ": bad queue depth ", queue_depth));
  }
  ASSIGN_OR_RETURN(auto dev, GetCharDev(dev_id));
  const size_t page = PageSize();
  const size_t map_len = RoundUp(queue_depth * sizeof(ublksrv_io_desc), page);
  const off_t off =
      static_cast<off_t>(UBLKSRV_CMD_BUF_OFFSET + q_id * RoundUp(kMaxDescBytesPerQueue, page));
  void* p = mmap(nullptr, map_len, PROT_READ, MAP_SHARED | MAP_POPULATE, dev->fd.get(), off);
  if (p == MAP_FAILED) {
    return UblkErrnoToStatus(
        errno, absl::StrCat("mmap descriptors of ", CharDevicePath(dev_id), " queue ", q_id));
  }
  return std::unique_ptr<QueueChannel>(
      new RealQueueChannel(std::move(dev), encoding_, q_id, queue_depth,
                           static_cast<const ublksrv_io_desc*>(p), map_len));
}

absl::StatusOr<int> ReadUblksMax(const std::string& path) {
  std::ifstream in(path);
  std::string text;
  if (!in || !std::getline(in, text)) {
    return absl::NotFoundError(absl::StrCat("cannot read ", path));
  }
  int value = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &value)) {
    return absl::InternalError(absl::StrCat(path, ": not a number: ", text));
  }
  return value;
}

}  // namespace ublk
