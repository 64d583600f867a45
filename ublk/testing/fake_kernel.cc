#include "ublk/testing/fake_kernel.h"

#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "ublk/mutex.h"
#include "ublk/ring.h"
#include "ublk/status_macros.h"
#include "ublk/unique_fd.h"

namespace ublk {

class FakeKernel::Request {
 public:
  uint32_t dev_id = 0;
  uint8_t op = 0;
  uint32_t flags = 0;
  uint64_t offset = 0;
  uint32_t len = 0;
  // Guarded by State::mu.
  std::string data;
  bool done = false;
  int32_t result = 0;
};

namespace {

using Request = FakeKernel::Request;

struct FakeTag {
  enum class S { kNone, kFetchPending, kOwned };
  S s = S::kNone;
  int efd = -1;  // the open channel's eventfd for this tag, else -1
  int32_t deliver = 0;
  bool deliver_ready = false;
  std::shared_ptr<Request> req;
  // Zero copy (UBLK_F_AUTO_BUF_REG): where the next request's buffer goes
  // (the ring and index of the last FETCH/COMMIT), and where the current
  // one is registered.
  Ring* cmd_ring = nullptr;
  uint16_t next_index = 0;
  bool registered = false;
  Ring* reg_ring = nullptr;
  uint16_t reg_index = 0;
  // The registered memory: the kernel registers the request's own pages; the
  // fake registers a page-aligned stand-in (so O_DIRECT works on it) and
  // copies the WRITE payload in at registration and the READ data out at
  // commit, which the server cannot tell apart.
  std::shared_ptr<char> reg_buf;
  char* reg_data = nullptr;
};

struct FakeQueue {
  std::vector<FakeTag> tags;
  std::unique_ptr<ublksrv_io_desc[]> descs;
  bool channel_open = false;
  // ublk_queue's nr_io_ready and ubq_daemon: FETCH_REQs counted since the
  // last reinit, and whether the queue became ready (the fetching task is
  // its daemon). Before 6.16 only START_USER_RECOVERY resets them; 7.x
  // also resets them when the char device is released.
  int nr_io_ready = 0;
  bool ready = false;
};

struct FakeDevice {
  DeviceInfo info;
  ublk_params params{};
  bool started = false;  // the disk exists (START_DEV .. STOP_DEV)
  bool stopped = false;  // STOP_DEV seen: every fetch is aborted
  bool aborted = false;  // server gone without recovery
  bool recovering = false;
  bool removed = false;
  // ublk_device's nr_queues_ready and mm (the fake's process generation of
  // the first "mmap", i.e. OpenQueue; 0: none).
  int nr_queues_ready = 0;
  uint64_t mm = 0;
  // 6.12: the server died with FETCHes pending on a queue that was not
  // ready; the kernel's cancel callback refuses them (ubq_daemon is NULL),
  // so the dead process never finishes exiting and holds the char device
  // until STOP_DEV/DEL_DEV completes those FETCHes.
  bool held_by_dying_server = false;
  std::vector<FakeQueue> queues;
  std::deque<std::shared_ptr<Request>> pending;
  int open_channels = 0;
  int fetched = 0;
  int inflight = 0;
  unsigned rr = 0;

  int total_tags() const { return info.nr_hw_queues * info.queue_depth; }
  uint64_t size_bytes() const { return params.basic.dev_sectors << 9; }
};

}  // namespace

struct FakeKernel::State {
  explicit State(FakeKernelOptions o) : options(o) {}

  const FakeKernelOptions options;
  mutable ublk::Mutex mu;
  ublk::CondVar cv;
  std::map<uint32_t, std::shared_ptr<FakeDevice>> devices ABSL_GUARDED_BY(mu);
  int fail_next_add ABSL_GUARDED_BY(mu) = 0;
  int get_features_calls ABSL_GUARDED_BY(mu) = 0;
  int fail_next_auto_reg ABSL_GUARDED_BY(mu) = 0;
  bool fail_next_user_copy ABSL_GUARDED_BY(mu) = false;
  int user_copies_on_ring ABSL_GUARDED_BY(mu) = 0;
  int user_copies_sync ABSL_GUARDED_BY(mu) = 0;
  uint64_t process ABSL_GUARDED_BY(mu) = 1;  // the current server process
  FakeKernel::CrashPoint crash_point ABSL_GUARDED_BY(mu) = FakeKernel::CrashPoint::kNone;
  int crash_after_fetches ABSL_GUARDED_BY(mu) = 0;
  int crash_fetches_seen ABSL_GUARDED_BY(mu) = 0;
  int rearms ABSL_GUARDED_BY(mu) = 0;
  // A crash point fired: the process is dead until NewProcess(), so its
  // workers' further FETCHes never reach the kernel.
  bool process_dead ABSL_GUARDED_BY(mu) = false;
  int auto_regs_at_close ABSL_GUARDED_BY(mu) = 0;
  int auto_regs ABSL_GUARDED_BY(mu) = 0;
  // Registered stand-ins whose request went away without a commit: kept
  // until the fake dies, as the server's ring may still hold them.
  std::vector<std::shared_ptr<char>> orphaned_bufs ABSL_GUARDED_BY(mu);
  // Buffer-table slots holding a request buffer registered by the fake.
  std::map<const Ring*, std::set<uint16_t>> fixed_regs ABSL_GUARDED_BY(mu);

  absl::StatusOr<std::shared_ptr<FakeDevice>> Lookup(uint32_t dev_id, absl::string_view what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    auto it = devices.find(dev_id);
    if (it == devices.end()) {
      return UblkErrnoToStatus(ENODEV, absl::StrCat("ublk ", what, " device ", dev_id));
    }
    return it->second;
  }

  void Deliver(FakeTag& t, int32_t result) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    t.deliver = result;
    t.deliver_ready = true;
    if (t.efd >= 0) {
      uint64_t one = 1;
      (void)!write(t.efd, &one, sizeof(one));
    }
  }

  void Complete(const std::shared_ptr<Request>& r, int32_t result)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    r->result = result;
    r->done = true;
    cv.NotifyAll();
  }

  // Like ublk_auto_buf_reg() without UBLK_AUTO_BUF_REG_FALLBACK: 0, or the
  // errno that makes the kernel end the request with EIO before delivery.
  int AutoRegister(FakeTag& t, Request& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (fail_next_auto_reg != 0) return std::exchange(fail_next_auto_reg, 0);
    if (t.cmd_ring == nullptr) return EINVAL;
    std::set<uint16_t>& used = fixed_regs[t.cmd_ring];
    if (used.count(t.next_index) != 0) return EBUSY;
    const size_t skew = options.zero_copy_misalign;
    void* mem = std::aligned_alloc(4096, (r.len + skew + 4095) / 4096 * 4096);
    if (mem == nullptr) return ENOMEM;
    std::shared_ptr<char> buf(static_cast<char*>(mem), [](char* p) { std::free(p); });
    char* data = buf.get() + skew;
    if (r.op == UBLK_IO_OP_WRITE) std::memcpy(data, r.data.data(), r.len);
    iovec iov{data, r.len};
    int ret =
        io_uring_register_buffers_update_tag(t.cmd_ring->raw(), t.next_index, &iov, nullptr, 1);
    if (ret < 0) return -ret;
    used.insert(t.next_index);
    t.reg_buf = std::move(buf);
    t.reg_data = data;
    t.registered = true;
    t.reg_ring = t.cmd_ring;
    t.reg_index = t.next_index;
    ++auto_regs;
    return 0;
  }

  // The commit's unregistration (and the ring's, when the server is gone).
  void AutoUnregister(FakeTag& t, bool touch_ring) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (!t.registered) return;
    if (touch_ring) {
      iovec empty{nullptr, 0};
      (void)io_uring_register_buffers_update_tag(t.reg_ring->raw(), t.reg_index, &empty, nullptr,
                                                 1);
    } else {
      orphaned_bufs.push_back(t.reg_buf);
    }
    fixed_regs[t.reg_ring].erase(t.reg_index);
    t.registered = false;
    t.reg_ring = nullptr;
    t.reg_buf = nullptr;
    t.reg_data = nullptr;
  }

  // False if the request could not be handed over (it is then failed).
  bool Assign(FakeDevice& d, uint16_t q, uint16_t tag, std::shared_ptr<Request> r)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    FakeTag& t = d.queues[q].tags[tag];
    ublksrv_io_desc& desc = d.queues[q].descs[tag];
    if ((d.info.flags & UBLK_F_AUTO_BUF_REG) != 0 && r->len > 0 &&
        (r->op == UBLK_IO_OP_READ || r->op == UBLK_IO_OP_WRITE)) {
      if (AutoRegister(t, *r) != 0) {
        // The tag's fetch stays pending; the block layer sees EIO.
        Complete(r, -EIO);
        return false;
      }
    }
    desc.op_flags = r->op | r->flags;
    desc.nr_sectors = r->len >> 9;
    desc.start_sector = r->offset >> 9;
    desc.addr = 0;
    t.s = FakeTag::S::kOwned;
    const bool get_data = (d.info.flags & UBLK_F_NEED_GET_DATA) != 0 &&
                          (d.info.flags & UBLK_F_USER_COPY) == 0 && r->op == UBLK_IO_OP_WRITE;
    t.req = std::move(r);
    ++d.inflight;
    Deliver(t, get_data ? UBLK_IO_RES_NEED_GET_DATA : UBLK_IO_RES_OK);
    return true;
  }

  void Dispatch(FakeDevice& d) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (!d.started || d.aborted || d.info.state != UBLK_S_DEV_LIVE) return;
    const size_t nq = d.queues.size();
    while (!d.pending.empty()) {
      bool assigned = false;
      for (size_t i = 0; i < nq && !assigned; ++i) {
        const uint16_t q = static_cast<uint16_t>((d.rr + i) % nq);
        auto& tags = d.queues[q].tags;
        for (uint16_t tag = 0; tag < tags.size(); ++tag) {
          if (tags[tag].s != FakeTag::S::kFetchPending) continue;
          auto r = std::move(d.pending.front());
          d.pending.pop_front();
          // A request failed at registration is consumed too: go on.
          Assign(d, q, tag, std::move(r));
          d.rr = q + 1;
          assigned = true;
          break;
        }
      }
      if (!assigned) return;
    }
  }

  // STOP_DEV, DEL_DEV and vanishing: no more disk, fetches aborted.
  void Kill(FakeDevice& d, int32_t io_error) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    // ublk_cancel_dev completes every pending FETCH: a server stuck in its
    // exit (held_by_dying_server) finishes it and releases the char device.
    d.held_by_dying_server = false;
    d.started = false;
    d.stopped = true;
    d.info.state = UBLK_S_DEV_DEAD;
    for (auto& r : d.pending) Complete(r, io_error);
    d.pending.clear();
    for (auto& q : d.queues) {
      for (auto& t : q.tags) {
        if (t.s == FakeTag::S::kFetchPending) {
          Deliver(t, UBLK_IO_RES_ABORT);
          t.s = FakeTag::S::kNone;
          --d.fetched;
        }
        // Owned requests complete when the server commits them; their next
        // fetch is aborted then.
      }
    }
  }

  // The last channel of a device closed: the server is gone.
  // Whether a crash point fires now (then it is spent).
  bool Crash(FakeKernel::CrashPoint p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (crash_point != p) return false;
    crash_point = FakeKernel::CrashPoint::kNone;
    process_dead = true;
    return true;
  }
  absl::Status Crashed(absl::string_view where) const {
    // Not Aborted: callers read that as "busy, retry".
    return absl::InternalError(absl::StrCat("fault point: server killed ", where));
  }

  // ublk_queue_reinit on every queue (START_USER_RECOVERY before 6.16, char
  // device release on 7.x).
  void ResetRound(FakeDevice& d) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    for (auto& q : d.queues) {
      q.nr_io_ready = 0;
      q.ready = false;
    }
    d.nr_queues_ready = 0;
    d.mm = 0;
  }

  void ServerGone(FakeDevice& d) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    const bool recovery = (d.info.flags & UBLK_F_USER_RECOVERY) != 0;
    if (options.legacy_recovery) {
      for (auto& q : d.queues) {
        bool pending = false;
        for (auto& t : q.tags) pending |= t.s == FakeTag::S::kFetchPending;
        if (pending && !q.ready) d.held_by_dying_server = true;
      }
    }
    const bool reissue = (d.info.flags & UBLK_F_USER_RECOVERY_REISSUE) != 0;
    const bool live = d.started && !d.aborted;
    std::vector<std::shared_ptr<Request>> requeue;
    for (auto& q : d.queues) {
      for (auto& t : q.tags) {
        if (t.registered) {
          // The server's ring keeps the buffer until it drops it (or dies);
          // this process's worker clears the range when it drops the queue.
          ++auto_regs_at_close;
          AutoUnregister(t, /*touch_ring=*/false);
        }
        t.cmd_ring = nullptr;
        if (t.s == FakeTag::S::kOwned && t.req != nullptr) {
          --d.inflight;
          if (live && recovery && reissue) {
            requeue.push_back(std::move(t.req));
          } else {
            Complete(t.req, -EIO);
          }
        }
        t.req = nullptr;
        t.s = FakeTag::S::kNone;
        t.deliver_ready = false;
      }
    }
    d.pending.insert(d.pending.begin(), requeue.begin(), requeue.end());
    d.fetched = 0;
    d.recovering = false;
    if (!options.legacy_recovery) ResetRound(d);
    if (!live) return;
    if (recovery) {
      d.info.state = UBLK_S_DEV_QUIESCED;
    } else {
      d.aborted = true;
      for (auto& r : d.pending) Complete(r, -EIO);
      d.pending.clear();
    }
  }

  absl::Status CheckEncoding(CmdEncoding e, absl::string_view what) const {
    if ((e == CmdEncoding::kIoctl && !options.accept_ioctl) ||
        (e == CmdEncoding::kLegacy && !options.accept_legacy)) {
      return UblkErrnoToStatus(EOPNOTSUPP,
                               absl::StrCat("ublk ", what, " (", CmdEncodingName(e), " encoding)"));
    }
    return absl::OkStatus();
  }

  // Waits (mu held) until every tag of `d` is fetched.
  absl::Status AwaitFetched(ublk::MutexLock& lock, const std::shared_ptr<FakeDevice>& d,
                            absl::string_view what) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    const auto deadline =
        std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(options.start_timeout);
    while (!d->removed && d->fetched < d->total_tags()) {
      if (cv.WaitUntil(lock, deadline) == std::cv_status::timeout) {
        if (d->fetched < d->total_tags()) {
          return absl::DeadlineExceededError(
              absl::StrCat("ublk ", what, " device ", d->info.dev_id, ": only ", d->fetched, " of ",
                           d->total_tags(), " tags fetched (the real kernel would wait forever)"));
        }
      }
    }
    if (d->removed) {
      return UblkErrnoToStatus(ENODEV, absl::StrCat("ublk ", what, " device ", d->info.dev_id));
    }
    return absl::OkStatus();
  }
};

namespace {

using State = FakeKernel::State;

class FakeQueueChannel final : public QueueChannel {
 public:
  FakeQueueChannel(std::shared_ptr<State> state, std::shared_ptr<FakeDevice> dev, uint16_t q_id,
                   std::vector<UniqueFd> efds)
      : state_(std::move(state)),
        dev_(std::move(dev)),
        q_id_(q_id),
        depth_(static_cast<uint16_t>(efds.size())),
        efds_(std::move(efds)),
        read_bufs_(new uint64_t[depth_]()) {}

  ~FakeQueueChannel() override {
    ublk::MutexLock lock(&state_->mu);
    FakeQueue& q = dev_->queues[q_id_];
    for (auto& t : q.tags) t.efd = -1;
    q.channel_open = false;
    if (--dev_->open_channels == 0 && !dev_->removed) state_->ServerGone(*dev_);
    // The eventfds close after this; a read still pending on the worker's
    // ring keeps its file alive until the ring cancels it.
  }

  uint32_t dev_id() const override { return dev_->info.dev_id; }
  uint16_t q_id() const override { return q_id_; }
  uint16_t queue_depth() const override { return depth_; }
  const ublksrv_io_desc& Desc(uint16_t tag) const override {
    return dev_->queues[q_id_].descs[tag];
  }

  absl::Status PrepFetch(Ring& ring, uint16_t tag, void* buf, uint64_t user_data) override {
    ublk::MutexLock lock(&state_->mu);
    FakeDevice& d = *dev_;
    RETURN_IF_ERROR(Check(tag, "FETCH_REQ"));
    FakeTag& t = d.queues[q_id_].tags[tag];
    if (t.s != FakeTag::S::kNone) return Err(EINVAL, tag, "FETCH_REQ: tag already fetched");
    FakeQueue& fq = d.queues[q_id_];
    if (fq.ready && fq.nr_io_ready >= depth_) {
      return Err(EBUSY, tag, "FETCH_REQ: queue already set up (ublk_queue_ready)");
    }
    if (state_->process_dead) return state_->Crashed("earlier");
    if (state_->crash_point == FakeKernel::CrashPoint::kDuringFetch &&
        state_->crash_fetches_seen++ >= state_->crash_after_fetches) {
      state_->crash_point = FakeKernel::CrashPoint::kNone;
      state_->process_dead = true;
      return state_->Crashed(absl::StrCat("after ", state_->crash_after_fetches, " FETCH_REQs"));
    }
    RETURN_IF_ERROR(CheckBuffer(tag, buf, /*read_commit=*/false, "FETCH_REQ"));
    RETURN_IF_ERROR(PrepRead(ring, tag, user_data));
    NoteAutoReg(t, ring, tag);
    t.s = FakeTag::S::kFetchPending;
    ++d.fetched;
    if (++fq.nr_io_ready == depth_) {
      fq.ready = true;
      ++d.nr_queues_ready;
    }
    state_->cv.NotifyAll();
    AfterFetch(d, t);
    return absl::OkStatus();
  }

  absl::Status PrepCommitAndFetch(Ring& ring, uint16_t tag, int32_t result, void* buf,
                                  uint64_t user_data) override {
    ublk::MutexLock lock(&state_->mu);
    FakeDevice& d = *dev_;
    RETURN_IF_ERROR(Check(tag, "COMMIT_AND_FETCH_REQ"));
    FakeTag& t = d.queues[q_id_].tags[tag];
    if (t.s != FakeTag::S::kOwned || t.req == nullptr) {
      return Err(EINVAL, tag, "COMMIT_AND_FETCH_REQ: tag not owned by the server");
    }
    const bool is_read = t.req->op == UBLK_IO_OP_READ;
    // Like 6.12: a READ commit needs an address even when nothing is copied.
    RETURN_IF_ERROR(CheckBuffer(tag, buf, is_read && !ZeroCopy(), "COMMIT_AND_FETCH_REQ"));
    if (t.registered && t.reg_ring != &ring) {
      return Err(EINVAL, tag,
                 "COMMIT_AND_FETCH_REQ on another ring than the one holding the auto-registered "
                 "buffer (the kernel would never complete the request)");
    }
    RETURN_IF_ERROR(PrepRead(ring, tag, user_data));
    if (t.registered && is_read && result > 0) {
      std::memcpy(t.req->data.data(), t.reg_data, std::min<size_t>(result, t.req->len));
    }
    state_->AutoUnregister(t, /*touch_ring=*/true);
    NoteAutoReg(t, ring, tag);
    if (is_read && result > 0 && buf != nullptr) {
      std::memcpy(t.req->data.data(), buf, std::min<size_t>(result, t.req->len));
    }
    state_->Complete(t.req, result);
    t.req = nullptr;
    --d.inflight;
    t.s = FakeTag::S::kFetchPending;
    AfterFetch(d, t);
    return absl::OkStatus();
  }

  absl::Status PrepNeedGetData(Ring& ring, uint16_t tag, void* buf, uint64_t user_data) override {
    ublk::MutexLock lock(&state_->mu);
    FakeDevice& d = *dev_;
    RETURN_IF_ERROR(Check(tag, "NEED_GET_DATA"));
    FakeTag& t = d.queues[q_id_].tags[tag];
    if ((d.info.flags & UBLK_F_NEED_GET_DATA) == 0 || (d.info.flags & UBLK_F_USER_COPY) != 0) {
      return Err(EINVAL, tag, "NEED_GET_DATA on a device without UBLK_F_NEED_GET_DATA");
    }
    if (t.s != FakeTag::S::kOwned || t.req == nullptr || t.req->op != UBLK_IO_OP_WRITE) {
      return Err(EINVAL, tag, "NEED_GET_DATA: tag does not hold a WRITE owned by the server");
    }
    if (buf == nullptr) return Err(EINVAL, tag, "NEED_GET_DATA without a buffer");
    RETURN_IF_ERROR(PrepRead(ring, tag, user_data));
    std::memcpy(buf, t.req->data.data(), t.req->len);
    state_->Deliver(t, UBLK_IO_RES_OK);
    return absl::OkStatus();
  }

  void SetAutoBufRegBase(uint16_t index_base) override {
    ublk::MutexLock lock(&state_->mu);
    auto_base_ = index_base;
  }

  uint64_t FixedBufferAddress(uint16_t tag) const override {
    ublk::MutexLock lock(&state_->mu);
    if (tag >= depth_) return 0;
    const FakeTag& t = dev_->queues[q_id_].tags[tag];
    // User memory is registered, so fixed-buffer I/O addresses it by its
    // user address (the kernel's request pages start at 0).
    return t.registered ? reinterpret_cast<uintptr_t>(t.reg_data) : 0;
  }

  int32_t TranslateCompletion(uint16_t tag, int32_t raw) override {
    ublk::MutexLock lock(&state_->mu);
    if (raw != sizeof(uint64_t)) return raw < 0 ? raw : -EIO;
    if (tag >= depth_) return -EINVAL;
    FakeTag& t = dev_->queues[q_id_].tags[tag];
    if (!t.deliver_ready) return -EIO;
    t.deliver_ready = false;
    return t.deliver;
  }

  absl::Status ReadRequestData(uint16_t tag, void* buf, size_t len, uint64_t offset) override {
    ublk::MutexLock lock(&state_->mu);
    ASSIGN_OR_RETURN(FakeTag * t, UserCopyTag(tag, UBLK_IO_OP_WRITE, len, offset, "pread"));
    std::memcpy(buf, t->req->data.data() + offset, len);
    ++state_->user_copies_sync;
    return absl::OkStatus();
  }

  absl::Status WriteResponseData(uint16_t tag, const void* buf, size_t len,
                                 uint64_t offset) override {
    ublk::MutexLock lock(&state_->mu);
    ASSIGN_OR_RETURN(FakeTag * t, UserCopyTag(tag, UBLK_IO_OP_READ, len, offset, "pwrite"));
    std::memcpy(t->req->data.data() + offset, buf, len);
    ++state_->user_copies_sync;
    return absl::OkStatus();
  }

  // The copy is made here; the SQE only has to complete with `len`: a write
  // of the same bytes to a scratch memfd (or, when a failure is injected, to
  // no file at all: -EBADF, nothing copied).
  absl::Status PrepReadRequestData(Ring& ring, uint16_t tag, void* buf, size_t len,
                                   uint64_t user_data) override {
    ublk::MutexLock lock(&state_->mu);
    ASSIGN_OR_RETURN(FakeTag * t, UserCopyTag(tag, UBLK_IO_OP_WRITE, len, 0, "READ on the ring"));
    const bool fail = std::exchange(state_->fail_next_user_copy, false);
    if (!fail) std::memcpy(buf, t->req->data.data(), len);
    return PrepCopyCompletion(ring, tag, buf, len, fail, user_data);
  }

  absl::Status PrepWriteResponseData(Ring& ring, uint16_t tag, const void* buf, size_t len,
                                     uint64_t user_data) override {
    ublk::MutexLock lock(&state_->mu);
    ASSIGN_OR_RETURN(FakeTag * t, UserCopyTag(tag, UBLK_IO_OP_READ, len, 0, "WRITE on the ring"));
    const bool fail = std::exchange(state_->fail_next_user_copy, false);
    if (!fail) std::memcpy(t->req->data.data(), buf, len);
    return PrepCopyCompletion(ring, tag, buf, len, fail, user_data);
  }

 private:
  absl::Status Err(int err, uint16_t tag, absl::string_view what) const {
    return UblkErrnoToStatus(err, absl::StrCat("ublk device ", dev_->info.dev_id, " queue ", q_id_,
                                               " tag ", tag, ": ", what));
  }
  absl::Status Check(uint16_t tag, absl::string_view what) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu) {
    if (dev_->removed) return Err(ENODEV, tag, absl::StrCat(what, ": device is gone"));
    if (tag >= depth_) return Err(EINVAL, tag, absl::StrCat(what, ": tag out of range"));
    return absl::OkStatus();
  }
  absl::Status CheckBuffer(uint16_t tag, void* buf, bool read_commit, absl::string_view what) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu) {
    const uint64_t flags = dev_->info.flags;
    if ((flags & UBLK_F_AUTO_BUF_REG) != 0) {
      if (buf != nullptr)
        return Err(EINVAL, tag, absl::StrCat(what, ": buffer given in zero-copy mode"));
    } else if ((flags & UBLK_F_USER_COPY) != 0) {
      if (buf != nullptr)
        return Err(EINVAL, tag, absl::StrCat(what, ": buffer given in user-copy mode"));
    } else if ((flags & UBLK_F_NEED_GET_DATA) == 0 || read_commit) {
      if (buf == nullptr) return Err(EINVAL, tag, absl::StrCat(what, ": no buffer"));
    }
    return absl::OkStatus();
  }
  absl::Status PrepCopyCompletion(Ring& ring, uint16_t tag, const void* buf, size_t len, bool fail,
                                  uint64_t user_data) ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu) {
    if (!scratch_.valid()) {
      int fd = memfd_create("fake-ublkc", MFD_CLOEXEC);
      if (fd < 0) return Err(errno, tag, "memfd_create for a user copy on the ring");
      scratch_.reset(fd);
    }
    io_uring_sqe* sqe = ring.GetSqe();
    if (sqe == nullptr) return Err(EBUSY, tag, "no free SQE on the ring");
    io_uring_prep_write(sqe, fail ? -1 : scratch_.get(), buf, static_cast<unsigned>(len), 0);
    sqe->user_data = user_data;
    ++state_->user_copies_on_ring;
    return absl::OkStatus();
  }
  absl::Status PrepRead(Ring& ring, uint16_t tag, uint64_t user_data) {
    io_uring_sqe* sqe = ring.GetSqe();
    if (sqe == nullptr) return Err(EBUSY, tag, "no free SQE on the ring");
    io_uring_prep_read(sqe, efds_[tag].get(), &read_bufs_[tag], sizeof(uint64_t), 0);
    sqe->user_data = user_data;
    return absl::OkStatus();
  }
  bool ZeroCopy() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu) {
    return (dev_->info.flags & UBLK_F_AUTO_BUF_REG) != 0;
  }
  // The index the kernel takes from the SQE's addr: base + tag once the
  // server set a base, else 0 (what a zeroed addr says).
  void NoteAutoReg(FakeTag& t, Ring& ring, uint16_t tag) ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu) {
    if (!ZeroCopy()) return;
    t.cmd_ring = &ring;
    t.next_index = auto_base_ >= 0 ? static_cast<uint16_t>(auto_base_ + tag) : 0;
  }
  void AfterFetch(FakeDevice& d, FakeTag& t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu) {
    if (d.stopped) {
      state_->Deliver(t, UBLK_IO_RES_ABORT);
      t.s = FakeTag::S::kNone;
      --d.fetched;
      return;
    }
    state_->Dispatch(d);
  }
  absl::StatusOr<FakeTag*> UserCopyTag(uint16_t tag, uint8_t op, size_t len, uint64_t offset,
                                       absl::string_view what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu) {
    RETURN_IF_ERROR(Check(tag, what));
    if ((dev_->info.flags & UBLK_F_USER_COPY) == 0) {
      return Err(EINVAL, tag, absl::StrCat(what, ": device is not in user-copy mode"));
    }
    FakeTag& t = dev_->queues[q_id_].tags[tag];
    if (t.s != FakeTag::S::kOwned || t.req == nullptr) {
      return Err(EINVAL, tag, absl::StrCat(what, ": no request owned by the server"));
    }
    if (t.req->op != op) return Err(EINVAL, tag, absl::StrCat(what, ": wrong direction"));
    if (offset > t.req->len || len > t.req->len - offset) {
      return Err(EINVAL, tag, absl::StrCat(what, ": beyond the request"));
    }
    return &t;
  }

  const std::shared_ptr<State> state_;
  const std::shared_ptr<FakeDevice> dev_;
  const uint16_t q_id_;
  const uint16_t depth_;
  const std::vector<UniqueFd> efds_;
  const std::unique_ptr<uint64_t[]> read_bufs_;  // written by the kernel's eventfd reads
  int auto_base_ ABSL_GUARDED_BY(state_->mu) = -1;
  UniqueFd scratch_ ABSL_GUARDED_BY(state_->mu);  // completes user copies on the ring
};

class FakeControlDevice final : public ControlDevice {
 public:
  FakeControlDevice(std::shared_ptr<State> state, CmdEncoding encoding)
      : state_(std::move(state)), encoding_(encoding) {}

  CmdEncoding encoding() const override { return encoding_; }

  absl::StatusOr<uint64_t> GetFeatures() override {
    {
      ublk::MutexLock lock(&state_->mu);
      ++state_->get_features_calls;
    }
    if (!state_->options.has_get_features || !state_->options.accept_ioctl) {
      return absl::UnimplementedError(
          "ublk GET_FEATURES not supported by this kernel (fake kernel without GET_FEATURES)");
    }
    return state_->options.features;
  }

  absl::StatusOr<DeviceInfo> AddDevice(const DeviceInfo& want) override {
    ublk::MutexLock lock(&state_->mu);
    const std::string what = want.dev_id == kAnyDevId ? std::string("ADD_DEV (any id)")
                                                      : absl::StrCat("ADD_DEV id ", want.dev_id);
    RETURN_IF_ERROR(state_->CheckEncoding(encoding_, what));
    if (state_->fail_next_add != 0) {
      int err = std::exchange(state_->fail_next_add, 0);
      return UblkErrnoToStatus(err, absl::StrCat("ublk ", what));
    }
    if (want.queue_depth == 0 || want.queue_depth > kMaxQueueDepth || want.nr_hw_queues == 0 ||
        want.nr_hw_queues > kMaxQueues || (want.dev_id != kAnyDevId && want.dev_id >= (1u << 20))) {
      return UblkErrnoToStatus(EINVAL, absl::StrCat("ublk ", what));
    }
    if (static_cast<int>(state_->devices.size()) >= state_->options.ublks_max) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "ublk ", what, ": refused, device limit reached (ublk_drv module parameter ublks_max=",
          state_->options.ublks_max, ")"));
    }
    uint32_t id = want.dev_id;
    if (id == kAnyDevId) {
      id = 0;
      while (state_->devices.count(id) != 0) ++id;
    } else if (state_->devices.count(id) != 0) {
      return UblkErrnoToStatus(EEXIST, absl::StrCat("ublk ", what));
    }
    auto d = std::make_shared<FakeDevice>();
    d->info = want;
    d->info.dev_id = id;
    d->info.state = UBLK_S_DEV_DEAD;
    d->info.max_io_buf_bytes = want.max_io_buf_bytes / 4096 * 4096;
    d->info.flags = want.flags & state_->options.features;
    // Like ublk_ctrl_add_dev(): no get-data with automatic registration.
    if (d->info.flags & UBLK_F_AUTO_BUF_REG) d->info.flags &= ~UBLK_F_NEED_GET_DATA;
    if (state_->options.features & UBLK_F_CMD_IOCTL_ENCODE) {
      d->info.flags |= UBLK_F_CMD_IOCTL_ENCODE | UBLK_F_URING_CMD_COMP_IN_TASK;
    }
    d->queues.resize(want.nr_hw_queues);
    for (auto& q : d->queues) {
      q.tags.resize(want.queue_depth);
      q.descs.reset(new ublksrv_io_desc[want.queue_depth]());
    }
    state_->devices[id] = d;
    return d->info;
  }

  absl::Status SetParams(uint32_t dev_id, const ublk_params& p) override {
    ublk::MutexLock lock(&state_->mu);
    const std::string what = absl::StrCat("ublk SET_PARAMS device ", dev_id);
    RETURN_IF_ERROR(state_->CheckEncoding(encoding_, what));
    ASSIGN_OR_RETURN(auto d, state_->Lookup(dev_id, "SET_PARAMS"));
    if (d->info.state == UBLK_S_DEV_LIVE) return UblkErrnoToStatus(EACCES, what);
    const auto& b = p.basic;
    const bool bad =
        (p.types & UBLK_PARAM_TYPE_BASIC) == 0 || b.logical_bs_shift < 9 ||
        b.logical_bs_shift > 12 || b.physical_bs_shift < b.logical_bs_shift ||
        b.max_sectors > (d->info.max_io_buf_bytes >> 9) || b.dev_sectors == 0 ||
        ((p.types & UBLK_PARAM_TYPE_DISCARD) != 0 &&
         (p.discard.discard_granularity == 0 ||
          (p.discard.max_discard_sectors != 0 && p.discard.max_discard_segments != 1)));
    if (bad) return UblkErrnoToStatus(EINVAL, what);
    d->params = p;
    d->params.types &= UBLK_PARAM_TYPE_BASIC | UBLK_PARAM_TYPE_DISCARD;
    return absl::OkStatus();
  }

  absl::StatusOr<ublk_params> GetParams(uint32_t dev_id) override {
    ublk::MutexLock lock(&state_->mu);
    RETURN_IF_ERROR(state_->CheckEncoding(encoding_, "GET_PARAMS"));
    ASSIGN_OR_RETURN(auto d, state_->Lookup(dev_id, "GET_PARAMS"));
    ublk_params p = d->params;
    p.len = sizeof(p);
    return p;
  }

  absl::Status StartDevice(uint32_t dev_id, pid_t pid) override {
    ublk::MutexLock lock(&state_->mu);
    const std::string what = absl::StrCat("ublk START_DEV device ", dev_id);
    RETURN_IF_ERROR(state_->CheckEncoding(encoding_, what));
    ASSIGN_OR_RETURN(auto d, state_->Lookup(dev_id, "START_DEV"));
    if (pid <= 0) return UblkErrnoToStatus(EINVAL, what);
    if (d->info.state == UBLK_S_DEV_LIVE || d->started) return UblkErrnoToStatus(EEXIST, what);
    if ((d->params.types & UBLK_PARAM_TYPE_BASIC) == 0) return UblkErrnoToStatus(EINVAL, what);
    RETURN_IF_ERROR(state_->AwaitFetched(lock, d, "START_DEV"));
    d->started = true;
    d->stopped = false;
    d->aborted = false;
    d->info.state = UBLK_S_DEV_LIVE;
    d->info.ublksrv_pid = pid;
    state_->Dispatch(*d);
    return absl::OkStatus();
  }

  absl::Status StopDevice(uint32_t dev_id) override {
    ublk::MutexLock lock(&state_->mu);
    RETURN_IF_ERROR(state_->CheckEncoding(encoding_, "STOP_DEV"));
    ASSIGN_OR_RETURN(auto d, state_->Lookup(dev_id, "STOP_DEV"));
    state_->Kill(*d, -EIO);
    return absl::OkStatus();
  }

  absl::Status DeleteDevice(uint32_t dev_id) override {
    ublk::MutexLock lock(&state_->mu);
    RETURN_IF_ERROR(state_->CheckEncoding(encoding_, "DEL_DEV"));
    ASSIGN_OR_RETURN(auto d, state_->Lookup(dev_id, "DEL_DEV"));
    if (d->open_channels > 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "ublk DEL_DEV device ", dev_id, ": ", d->open_channels,
          " queue channel(s) still open (the real kernel would hang until they close)"));
    }
    state_->Kill(*d, -EIO);
    d->removed = true;
    state_->devices.erase(dev_id);
    state_->cv.NotifyAll();
    return absl::OkStatus();
  }

  absl::StatusOr<DeviceInfo> GetDeviceInfo(uint32_t dev_id) override {
    ublk::MutexLock lock(&state_->mu);
    RETURN_IF_ERROR(state_->CheckEncoding(encoding_, "GET_DEV_INFO"));
    ASSIGN_OR_RETURN(auto d, state_->Lookup(dev_id, "GET_DEV_INFO"));
    return d->info;
  }

  absl::Status StartUserRecovery(uint32_t dev_id) override {
    ublk::MutexLock lock(&state_->mu);
    const std::string what = absl::StrCat("ublk START_USER_RECOVERY device ", dev_id);
    RETURN_IF_ERROR(state_->CheckEncoding(encoding_, what));
    ASSIGN_OR_RETURN(auto d, state_->Lookup(dev_id, "START_USER_RECOVERY"));
    if ((d->info.flags & UBLK_F_USER_RECOVERY) == 0) return UblkErrnoToStatus(EINVAL, what);
    // 6.1-6.15 check nr_queues_ready before anything else.
    if (state_->options.legacy_recovery && d->nr_queues_ready == 0) {
      return UblkErrnoToStatus(EINVAL, what);
    }
    if (d->open_channels > 0 || d->held_by_dying_server || d->info.state != UBLK_S_DEV_QUIESCED) {
      return UblkErrnoToStatus(EBUSY, what);
    }
    if (state_->options.legacy_recovery && d->nr_queues_ready < d->info.nr_hw_queues) {
      // ublk_queue_reinit does put_task_struct(ubq_daemon) on a queue that
      // never became ready: NULL. The real kernel oopses here.
      return absl::InternalError(
          absl::StrCat(what, ": kernel oops: ", d->nr_queues_ready, " of ", d->info.nr_hw_queues,
                       " queues ready (put_task_struct(NULL) in ublk_queue_reinit)"));
    }
    if (state_->options.legacy_recovery) state_->ResetRound(*d);
    d->recovering = true;
    d->fetched = 0;
    if (state_->Crash(FakeKernel::CrashPoint::kAfterStartRecovery)) {
      return state_->Crashed("after START_USER_RECOVERY");
    }
    return absl::OkStatus();
  }

  absl::Status EndUserRecovery(uint32_t dev_id, pid_t pid) override {
    ublk::MutexLock lock(&state_->mu);
    const std::string what = absl::StrCat("ublk END_USER_RECOVERY device ", dev_id);
    RETURN_IF_ERROR(state_->CheckEncoding(encoding_, what));
    ASSIGN_OR_RETURN(auto d, state_->Lookup(dev_id, "END_USER_RECOVERY"));
    if (d->info.state != UBLK_S_DEV_QUIESCED || !d->recovering) {
      return UblkErrnoToStatus(EBUSY, what);
    }
    if (pid <= 0) return UblkErrnoToStatus(EINVAL, what);
    if (state_->Crash(FakeKernel::CrashPoint::kBeforeEndRecovery)) {
      return state_->Crashed("before END_USER_RECOVERY");
    }
    RETURN_IF_ERROR(state_->AwaitFetched(lock, d, "END_USER_RECOVERY"));
    if (d->info.state != UBLK_S_DEV_QUIESCED) return UblkErrnoToStatus(EBUSY, what);
    d->recovering = false;
    d->info.state = UBLK_S_DEV_LIVE;
    d->info.ublksrv_pid = pid;
    state_->Dispatch(*d);
    if (state_->Crash(FakeKernel::CrashPoint::kAfterEndRecovery)) {
      return state_->Crashed("after END_USER_RECOVERY");
    }
    return absl::OkStatus();
  }

  absl::Status RearmRecovery(uint32_t dev_id, uint16_t nr_queues, uint16_t depth) override {
    ublk::MutexLock lock(&state_->mu);
    const std::string what = absl::StrCat("ublk device ", dev_id, ": re-arming recovery");
    ASSIGN_OR_RETURN(auto d, state_->Lookup(dev_id, "re-arm"));
    if (nr_queues != d->info.nr_hw_queues || depth != d->info.queue_depth) {
      return UblkErrnoToStatus(EINVAL, what);
    }
    if (d->open_channels > 0 || d->held_by_dying_server) {
      return absl::UnavailableError(
          absl::StrCat(what, ": open ", CharDevicePath(dev_id),
                       ": busy: another ublk server still holds ublk device ", dev_id));
    }
    ++state_->rearms;
    // The helper task FETCHes every tag of each queue that is not ready
    // (a ready queue refuses the first one), then dies: a dead server with
    // every queue ready, whose release resets the round on 7.x.
    for (auto& q : d->queues) {
      if (q.ready) continue;
      q.nr_io_ready = d->info.queue_depth;
      q.ready = true;
      ++d->nr_queues_ready;
    }
    if (!state_->options.legacy_recovery) state_->ResetRound(*d);
    return absl::OkStatus();
  }

  absl::Status UpdateSize(uint32_t dev_id, uint64_t dev_sectors) override {
    ublk::MutexLock lock(&state_->mu);
    if ((state_->options.features & UBLK_F_UPDATE_SIZE) == 0) {
      return absl::UnimplementedError(absl::StrCat("resizing ublk device ", dev_id,
                                                   " needs UBLK_U_CMD_UPDATE_SIZE (Linux 6.16+)"));
    }
    ASSIGN_OR_RETURN(auto d, state_->Lookup(dev_id, "UPDATE_SIZE"));
    d->params.basic.dev_sectors = dev_sectors;
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<QueueChannel>> OpenQueue(uint32_t dev_id, uint16_t q_id,
                                                          uint16_t depth) override {
    ublk::MutexLock lock(&state_->mu);
    const std::string what = absl::StrCat("open ", CharDevicePath(dev_id), " queue ", q_id);
    ASSIGN_OR_RETURN(auto d, state_->Lookup(dev_id, "open queue of"));
    if (q_id >= d->info.nr_hw_queues || depth != d->info.queue_depth) {
      return UblkErrnoToStatus(EINVAL, absl::StrCat(what, " depth ", depth));
    }
    FakeQueue& q = d->queues[q_id];
    if (q.channel_open) {
      return absl::UnavailableError(absl::StrCat(what, ": busy: another server holds it"));
    }
    if (d->info.state == UBLK_S_DEV_QUIESCED && !d->recovering) {
      return absl::FailedPreconditionError(
          absl::StrCat(what, ": device is QUIESCED, START_USER_RECOVERY first"));
    }
    if (d->held_by_dying_server || (d->open_channels > 0 && d->mm != state_->process)) {
      return absl::UnavailableError(absl::StrCat(what, ": busy: another server holds it"));
    }
    // ublk_ch_mmap: the first process to map after ADD_DEV/START (7.x: or
    // after the char device's release) owns the device's mappings.
    if (d->mm == 0) d->mm = state_->process;
    if (d->mm != state_->process) {
      return UblkErrnoToStatus(
          EINVAL, absl::StrCat("mmap descriptors of ", CharDevicePath(dev_id), " queue ", q_id,
                               " (mapped by another process since START_USER_RECOVERY)"));
    }
    if (state_->Crash(FakeKernel::CrashPoint::kAfterMmap)) {
      if (d->open_channels == 0) state_->ServerGone(*d);
      return state_->Crashed("after mmap");
    }
    std::vector<UniqueFd> efds;
    for (uint16_t tag = 0; tag < depth; ++tag) {
      int fd = eventfd(0, EFD_CLOEXEC);
      if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat(what, ": eventfd"));
      efds.emplace_back(fd);
      q.tags[tag].efd = fd;
      q.tags[tag].deliver_ready = false;
    }
    q.channel_open = true;
    ++d->open_channels;
    return std::unique_ptr<QueueChannel>(new FakeQueueChannel(state_, d, q_id, std::move(efds)));
  }

 private:
  const std::shared_ptr<State> state_;
  const CmdEncoding encoding_;
};

}  // namespace

FakeKernel::FakeKernel(FakeKernelOptions options) : state_(std::make_shared<State>(options)) {}

FakeKernel::~FakeKernel() = default;

std::unique_ptr<ControlDevice> FakeKernel::OpenControl(CmdEncoding encoding) {
  return std::make_unique<FakeControlDevice>(state_, encoding);
}

std::shared_ptr<FakeKernel::Request> FakeKernel::SubmitIoAsync(uint32_t dev_id, uint8_t op,
                                                               uint64_t offset, uint32_t len,
                                                               std::string data, uint32_t flags) {
  auto r = std::make_shared<Request>();
  r->dev_id = dev_id;
  r->op = op;
  r->flags = flags;
  r->offset = offset;
  r->len = len;
  r->data = std::move(data);
  r->data.resize(op == UBLK_IO_OP_READ || op == UBLK_IO_OP_WRITE ? len : 0);
  // A READ's buffer starts as poison, so a server that reports data it did
  // not provide is caught.
  if (op == UBLK_IO_OP_READ) std::fill(r->data.begin(), r->data.end(), '\xa5');
  ublk::MutexLock lock(&state_->mu);
  auto it = state_->devices.find(dev_id);
  if (it == state_->devices.end() || !it->second->started) {
    state_->Complete(r, -ENODEV);
    return r;
  }
  FakeDevice& d = *it->second;
  if (d.aborted) {
    state_->Complete(r, -EIO);
    return r;
  }
  if (len % 512 != 0 || offset % 512 != 0) {
    state_->Complete(r, -EINVAL);
    return r;
  }
  if (op != UBLK_IO_OP_FLUSH && (offset > d.size_bytes() || len > d.size_bytes() - offset)) {
    state_->Complete(r, -EIO);
    return r;
  }
  d.pending.push_back(r);
  state_->Dispatch(d);
  return r;
}

absl::StatusOr<FakeIoResult> FakeKernel::Wait(const std::shared_ptr<Request>& r,
                                              absl::Duration timeout) {
  ublk::MutexLock lock(&state_->mu);
  const auto deadline = std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(timeout);
  while (!r->done) {
    if (state_->cv.WaitUntil(lock, deadline) == std::cv_status::timeout && !r->done) {
      return absl::DeadlineExceededError(
          absl::StrCat("fake block I/O op ", r->op, " at ", r->offset, " on ublk device ",
                       r->dev_id, " not done after ", absl::FormatDuration(timeout)));
    }
  }
  return FakeIoResult{r->result, r->data};
}

absl::StatusOr<FakeIoResult> FakeKernel::SubmitIo(uint32_t dev_id, uint8_t op, uint64_t offset,
                                                  uint32_t len, std::string data,
                                                  absl::Duration timeout) {
  return Wait(SubmitIoAsync(dev_id, op, offset, len, std::move(data)), timeout);
}

absl::StatusOr<FakeIoResult> FakeKernel::Write(uint32_t dev_id, uint64_t offset, std::string data) {
  const uint32_t len = static_cast<uint32_t>(data.size());
  return SubmitIo(dev_id, UBLK_IO_OP_WRITE, offset, len, std::move(data));
}

absl::StatusOr<FakeIoResult> FakeKernel::Read(uint32_t dev_id, uint64_t offset, uint32_t len) {
  return SubmitIo(dev_id, UBLK_IO_OP_READ, offset, len);
}

void FakeKernel::NewProcess() {
  ublk::MutexLock lock(&state_->mu);
  ++state_->process;
  state_->process_dead = false;
}

void FakeKernel::CrashAt(CrashPoint point, int after_fetches) {
  ublk::MutexLock lock(&state_->mu);
  state_->crash_point = point;
  state_->crash_after_fetches = after_fetches;
  state_->crash_fetches_seen = 0;
}

bool FakeKernel::HeldByDyingServer(uint32_t dev_id) const {
  ublk::MutexLock lock(&state_->mu);
  auto it = state_->devices.find(dev_id);
  return it != state_->devices.end() && it->second->held_by_dying_server;
}

int FakeKernel::rearms() const {
  ublk::MutexLock lock(&state_->mu);
  return state_->rearms;
}

void FakeKernel::FailNextAddDevice(int err) {
  ublk::MutexLock lock(&state_->mu);
  state_->fail_next_add = err;
}

void FakeKernel::VanishDevice(uint32_t dev_id) {
  ublk::MutexLock lock(&state_->mu);
  auto it = state_->devices.find(dev_id);
  if (it == state_->devices.end()) return;
  FakeDevice& d = *it->second;
  state_->Kill(d, -ENODEV);
  for (auto& q : d.queues) {
    for (auto& t : q.tags) {
      if (t.req != nullptr) state_->Complete(t.req, -ENODEV);
      t.req = nullptr;
      if (t.s == FakeTag::S::kOwned) {
        state_->Deliver(t, UBLK_IO_RES_ABORT);
        t.s = FakeTag::S::kNone;
      }
    }
  }
  d.removed = true;
  state_->devices.erase(it);
  state_->cv.NotifyAll();
}

void FakeKernel::SetUblksrvFlags(uint32_t dev_id, uint64_t value) {
  ublk::MutexLock lock(&state_->mu);
  auto it = state_->devices.find(dev_id);
  if (it != state_->devices.end()) it->second->info.ublksrv_flags = value;
}

std::optional<uint16_t> FakeKernel::DeviceState(uint32_t dev_id) const {
  ublk::MutexLock lock(&state_->mu);
  auto it = state_->devices.find(dev_id);
  if (it == state_->devices.end()) return std::nullopt;
  return it->second->info.state;
}

size_t FakeKernel::device_count() const {
  ublk::MutexLock lock(&state_->mu);
  return state_->devices.size();
}

int FakeKernel::open_channels(uint32_t dev_id) const {
  ublk::MutexLock lock(&state_->mu);
  auto it = state_->devices.find(dev_id);
  return it == state_->devices.end() ? 0 : it->second->open_channels;
}

void FakeKernel::FailNextAutoBufReg(int err) {
  ublk::MutexLock lock(&state_->mu);
  state_->fail_next_auto_reg = err;
}

void FakeKernel::FailNextUserCopyOnRing() {
  ublk::MutexLock lock(&state_->mu);
  state_->fail_next_user_copy = true;
}

int FakeKernel::user_copies_on_ring() const {
  ublk::MutexLock lock(&state_->mu);
  return state_->user_copies_on_ring;
}

int FakeKernel::user_copies_sync() const {
  ublk::MutexLock lock(&state_->mu);
  return state_->user_copies_sync;
}

void* FakeKernel::lock_handle() const { return state_->mu.native_handle(); }

unsigned FakeKernel::worker_ring_flags() const {
  return (state_->options.features & UBLK_F_AUTO_BUF_REG) != 0 ? 0u : Ring::kSingleIssuerFlags;
}

int FakeKernel::auto_buf_regs() const {
  ublk::MutexLock lock(&state_->mu);
  return state_->auto_regs;
}

int FakeKernel::auto_buf_regs_at_close() const {
  ublk::MutexLock lock(&state_->mu);
  return state_->auto_regs_at_close;
}

int FakeKernel::get_features_calls() const {
  ublk::MutexLock lock(&state_->mu);
  return state_->get_features_calls;
}

int FakeKernel::inflight(uint32_t dev_id) const {
  ublk::MutexLock lock(&state_->mu);
  auto it = state_->devices.find(dev_id);
  return it == state_->devices.end() ? 0 : it->second->inflight;
}

}  // namespace ublk
