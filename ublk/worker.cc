#include "ublk/worker.h"

#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "ublk/errno.h"
#include "ublk/mutex.h"
#include "ublk/status_macros.h"

namespace ublk {
namespace {
constexpr absl::Duration kRemovalPoll = absl::Milliseconds(5);

// A one-shot event (absl::Notification is invisible to TSan with Debian's
// uninstrumented abseil).
class Latch {
 public:
  void Notify() {
    {
      ublk::MutexLock lock(&mu_);
      done_ = true;
    }
    cv_.NotifyAll();
  }
  void Wait() {
    ublk::MutexLock lock(&mu_);
    cv_.Wait(lock, [this] { return done_; });
  }

 private:
  ublk::Mutex mu_;
  ublk::CondVar cv_;
  bool done_ = false;
};
}  // namespace

struct Worker::TagState {
  enum class Phase : uint8_t {
    kIdle,      // no command in the kernel, nothing in flight (transient)
    kFetching,  // FETCH / COMMIT_AND_FETCH in the kernel
    kGetData,   // NEED_GET_DATA in the kernel (holds the buffer)
    kTargetIo,  // target I/O on the ring (holds the buffer)
    kCopying,   // user copy to or from /dev/ublkcN on the ring (holds the buffer)
    kParked,    // waiting for a buffer
    kDone,      // aborted by the kernel: no more commands for this tag
  };
  enum class Next : uint8_t { kStart, kNeedGetData };
  Phase phase = Phase::kIdle;
  Next next = Next::kStart;
  bool zero_read = false;  // a READ answered from zero_region_
  int32_t result = 0;      // kCopying a READ's data: the result to commit after
  IoBuffer buffer;
  TargetIo io;
  AsyncCompletion async;  // posted by a target that completes off the ring
};

struct Worker::Removal {
  Latch done;
  bool drained = false;  // written before done.Notify()
};

struct Worker::Queue {
  QueueId id = 0;
  uint16_t slot = 0;
  uint16_t gen = 0;
  std::unique_ptr<QueueChannel> channel;
  std::shared_ptr<Target> target;
  CopyMode mode = CopyMode::kUserCopy;
  int32_t buf_base = -1;  // zero copy: first index of the queue's buffer-table range
  std::vector<TagState> tags;
  // Tags waiting for a buffer, oldest first: a ring of queue_depth entries
  // (a tag is parked at most once), allocated with the queue so that
  // parking never allocates.
  std::unique_ptr<uint16_t[]> parked;
  uint16_t parked_head = 0;
  uint16_t parked_count = 0;
  unsigned done_tags = 0;
  unsigned busy = 0;  // tags in kGetData, kTargetIo or kCopying
  // The target's ring I/O for this queue is io-wq threads' CPU work
  // (Target::ring_io_on_kernel_threads): no busy polling while busy > 0.
  bool io_on_kernel_threads = false;
  bool removing = false;
  absl::Time deadline;
  std::shared_ptr<Removal> removed;

  void SetPhase(uint16_t tag, TagState::Phase phase) {
    TagState& t = tags[tag];
    auto is_busy = [](TagState::Phase p) {
      return p == TagState::Phase::kGetData || p == TagState::Phase::kTargetIo ||
             p == TagState::Phase::kCopying;
    };
    if (is_busy(t.phase)) --busy;
    if (is_busy(phase)) ++busy;
    if (phase == TagState::Phase::kDone && t.phase != TagState::Phase::kDone) ++done_tags;
    t.phase = phase;
  }
};

absl::StatusOr<std::unique_ptr<Worker>> Worker::Create(const WorkerOptions& options) {
  if (options.memory == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("worker ", options.worker_id, ": WorkerOptions.memory is required"));
  }
  std::unique_ptr<Worker> w(new Worker(options));
  int efd = eventfd(0, EFD_CLOEXEC);
  if (efd < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("worker ", options.worker_id, ": eventfd"));
  }
  w->wakeup_fd_.reset(efd);
  absl::StatusOr<std::unique_ptr<AsyncCompletionQueue>> async = AsyncCompletionQueue::Create();
  if (!async.ok()) {
    return absl::Status(async.status().code(),
                        absl::StrCat("worker ", options.worker_id, ": ", async.status().message()));
  }
  w->async_ = std::move(*async);
  void* zeros = mmap(nullptr, kZeroRegionBytes, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  // Without it READs of the null target take a buffer and a memset.
  if (zeros != MAP_FAILED) w->zero_region_ = zeros;
  w->pool_ = std::make_unique<BufferPool>(options.buffer_pool, *options.memory, w->clock_,
                                          options.pool_metrics, options.worker_id, options.budget);
  w->pool_->SetDemand(0);  // grows with the copy-mode queues attached
  Worker* self = w.get();
  w->pool_->SetSlotReleasedCallback([self] { self->slot_released_ = true; });
  std::promise<absl::Status> ready;
  std::future<absl::Status> ring_made = ready.get_future();
  w->thread_ = std::thread([self, &ready] { self->Main(&ready); });
  w->thread_id_ = w->thread_.get_id();
  absl::Status status = ring_made.get();
  if (!status.ok()) {
    w->thread_.join();  // Main returned without serving
    {
      ublk::MutexLock lock(&w->mu_);
      w->stopped_ = true;
    }
    return status;
  }
  VLOG(1) << "worker " << options.worker_id << ": io_uring setup flags "
          << absl::StrCat("0x", absl::Hex(w->ring_flags_))
          << (w->ring_->ring_fd_registered() ? ", ring fd registered" : "");
  return w;
}

void Worker::Main(std::promise<absl::Status>* ready) {
  // "ublk-worker-N" in ps -L, top and perf (truncated to the kernel's 15
  // bytes past worker 999).
  char name[16];
  snprintf(name, sizeof(name), "ublk-worker-%d", id());
  pthread_setname_np(pthread_self(), name);
  if (options_.cpu >= 0) PinToCpu(options_.cpu);
  absl::StatusOr<std::unique_ptr<Ring>> ring = Ring::CreateSingleIssuer(
      options_.ring_entries, options_.cq_entries, options_.ring_flags_allowed);
  if (!ring.ok()) {
    ready->set_value(absl::Status(ring.status().code(),
                                  absl::StrCat("worker ", id(), ": ", ring.status().message())));
    return;
  }
  ring_ = std::move(*ring);
  ring_flags_ = ring_->flags();
  ready->set_value(absl::OkStatus());  // `ready` is gone after this
  Run();
}

std::vector<int> AllowedCpus(pid_t tid) {
  std::vector<int> cpus;
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (sched_getaffinity(tid, sizeof(allowed), &allowed) != 0) return cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &allowed)) cpus.push_back(c);
  }
  return cpus;
}

int RoundRobinCpu(const std::vector<int>& cpus, int i) {
  if (cpus.empty() || i < 0) return -1;
  return cpus[static_cast<size_t>(i) % cpus.size()];
}

void Worker::PinToCpu(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  int err = cpu < CPU_SETSIZE ? 0 : EINVAL;
  if (err == 0) {
    CPU_SET(cpu, &set);
    err = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
  }
  if (err != 0) {
    LOG(WARNING) << "worker " << id() << ": cannot pin to CPU " << cpu << " (" << ublk::Errno(err)
                 << "), serving unpinned";
    return;
  }
  pinned_cpu_ = cpu;
}

Worker::Worker(const WorkerOptions& options)
    : options_(options), clock_(options.clock != nullptr ? *options.clock : real_clock_) {}

Worker::~Worker() {
  Stop();
  if (zero_region_ != nullptr) munmap(zero_region_, kZeroRegionBytes);
}

void Worker::Stop() {
  {
    ublk::MutexLock lock(&mu_);
    if (stopped_) {
      // Already stopping or stopped; just make sure the thread is gone.
    } else {
      stopped_ = true;
      tasks_.push_back([this] {
        running_ = false;
        for (auto& q : slots_) {
          if (q != nullptr && !q->removing) {
            q->removing = true;
            q->deadline = absl::InfinitePast();
          }
        }
      });
    }
  }
  uint64_t one = 1;
  if (wakeup_fd_.valid()) (void)!write(wakeup_fd_.get(), &one, sizeof(one));
  if (thread_.joinable() && std::this_thread::get_id() != thread_id_) thread_.join();
}

absl::Status Worker::RunOnWorker(std::function<void()> task) {
  if (std::this_thread::get_id() == thread_id_) {
    return absl::FailedPreconditionError(
        absl::StrCat("worker ", id(), ": called from its own thread"));
  }
  auto done = std::make_shared<Latch>();
  {
    ublk::MutexLock lock(&mu_);
    if (stopped_) {
      return absl::FailedPreconditionError(absl::StrCat("worker ", id(), " is stopped"));
    }
    tasks_.push_back([task = std::move(task), done] {
      task();
      done->Notify();
    });
  }
  uint64_t one = 1;
  if (write(wakeup_fd_.get(), &one, sizeof(one)) != sizeof(one)) {
    return absl::ErrnoToStatus(errno, absl::StrCat("worker ", id(), ": wake up"));
  }
  done->Wait();
  return absl::OkStatus();
}

absl::StatusOr<Worker::QueueId> Worker::AddQueue(QueueConfig config) {
  if (config.channel == nullptr || config.target == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("worker ", id(), ": queue without channel or target"));
  }
  absl::StatusOr<QueueId> result = absl::InternalError("not run");
  auto shared = std::make_shared<QueueConfig>(std::move(config));
  RETURN_IF_ERROR(RunOnWorker([this, shared, &result] {
    uint16_t slot = 0;
    while (slot < slots_.size() && slots_[slot] != nullptr) ++slot;
    if (slot == slots_.size()) {
      if (slots_.size() >= UINT16_MAX) {
        result = absl::ResourceExhaustedError(absl::StrCat("worker ", id(), ": too many queues"));
        return;
      }
      slots_.emplace_back();
      slot_gen_.push_back(0);
    }
    auto q = std::make_unique<Queue>();
    q->channel = std::move(shared->channel);
    q->target = std::move(shared->target);
    q->mode = shared->copy_mode;
    q->io_on_kernel_threads = pinned_cpu_ >= 0 && !options_.poll_while_on_kernel_threads &&
                              q->target->ring_io_on_kernel_threads(q->mode == CopyMode::kZeroCopy);
    const uint16_t depth = q->channel->queue_depth();
    q->tags.resize(depth);
    q->parked.reset(new (std::nothrow) uint16_t[depth]);
    if (q->parked == nullptr) {
      result = absl::ResourceExhaustedError(absl::StrCat(
          "worker ", id(), ": no memory for the parked list of a queue of depth ", depth));
      return;
    }
    if (q->mode == CopyMode::kGetData) {
      // Get-data READ buffers wait here for one submit: reserve room for
      // every tag now, so that a commit never has to grow the vector.
      release_after_submit_.reserve(get_data_depth_ + depth);
      get_data_depth_ += depth;
    }
    if (q->mode != CopyMode::kZeroCopy) {
      copy_demand_ += depth;
      pool_->SetDemand(copy_demand_);
    }
    if (q->mode == CopyMode::kZeroCopy) {
      absl::Status table = EnsureBufferTable();
      absl::StatusOr<uint16_t> base =
          table.ok() ? AllocBufferRange(q->channel->queue_depth()) : table;
      if (!base.ok()) {
        result =
            absl::Status(base.status().code(),
                         absl::StrCat(base.status().message(), ": cannot attach zero-copy queue ",
                                      q->channel->q_id(), " of ublk device ", q->channel->dev_id(),
                                      " (depth ", q->channel->queue_depth(), ")"));
        return;  // the channel closes with q (zero copy: no demand was added)
      }
      q->buf_base = *base;
      q->channel->SetAutoBufRegBase(*base);
    }
    q->id = next_queue_id_++;
    q->slot = slot;
    q->gen = ++slot_gen_[slot];
    Queue& ref = *q;
    slots_[slot] = std::move(q);
    queue_count_.fetch_add(1, std::memory_order_relaxed);
    absl::Status status;
    for (uint16_t tag = 0; tag < ref.tags.size(); ++tag) {
      absl::Status s = ref.channel->PrepFetch(*ring_, tag, nullptr, UserData(Kind::kCmd, ref, tag));
      if (!s.ok()) {
        ref.SetPhase(tag, TagState::Phase::kDone);
        status.Update(s);
        continue;
      }
      ref.SetPhase(tag, TagState::Phase::kFetching);
    }
    status.Update(ring_->Submit().status());
    result = ref.id;
    if (!status.ok()) {
      result = status;
      // Give the queue back right away; the caller sees why.
      ref.removing = true;
      ref.deadline = absl::InfinitePast();
    }
  }));
  return result;
}

absl::StatusOr<bool> Worker::RemoveQueue(QueueId queue_id, absl::Duration drain_timeout) {
  std::shared_ptr<Removal> removed;
  RETURN_IF_ERROR(RunOnWorker([&] {
    for (auto& q : slots_) {
      if (q != nullptr && q->id == queue_id && q->removed == nullptr) {
        removed = std::make_shared<Removal>();
        q->removed = removed;
        q->removing = true;
        q->deadline = clock_.Now() + drain_timeout;
        return;
      }
    }
  }));
  if (removed == nullptr) {
    return absl::NotFoundError(absl::StrCat("worker ", id(), ": no queue ", queue_id));
  }
  removed->done.Wait();
  return removed->drained;
}

void Worker::Poke() {
  uint64_t one = 1;
  if (wakeup_fd_.valid()) (void)!write(wakeup_fd_.get(), &one, sizeof(one));
}

void Worker::ArmWakeup() {
  io_uring_sqe* sqe = ring_->GetSqe();
  if (sqe == nullptr) {
    LOG(ERROR) << "worker " << id() << ": cannot arm wakeup read";
    return;
  }
  io_uring_prep_read(sqe, wakeup_fd_.get(), &wakeup_buf_, sizeof(wakeup_buf_), 0);
  sqe->user_data = static_cast<uint64_t>(Kind::kWakeup) << 56;
}

void Worker::ArmAsync() {
  io_uring_sqe* sqe = ring_->GetSqe();
  if (sqe == nullptr) {
    LOG(ERROR) << "worker " << id() << ": cannot arm the async completion read";
    return;
  }
  io_uring_prep_read(sqe, async_->fd(), &async_buf_, sizeof(async_buf_), 0);
  sqe->user_data = static_cast<uint64_t>(Kind::kAsync) << 56;
}

void Worker::DrainAsync() {
  async_->Drain([this](uint64_t user_data, int32_t result) {
    io_uring_cqe cqe{};
    cqe.user_data = user_data;
    cqe.res = result;
    HandleCqe(cqe);
  });
}

void Worker::RunTasks() {
  std::vector<std::function<void()>> tasks;
  {
    ublk::MutexLock lock(&mu_);
    tasks.swap(tasks_);
  }
  for (auto& task : tasks) task();
}

uint64_t Worker::UserData(Kind kind, const Queue& q, uint16_t tag) const {
  return (static_cast<uint64_t>(kind) << 56) | (static_cast<uint64_t>(q.gen) << 32) |
         (static_cast<uint64_t>(q.slot) << 16) | tag;
}

Worker::Queue* Worker::FindQueue(uint16_t slot, uint16_t gen) {
  if (slot >= slots_.size() || slots_[slot] == nullptr || slots_[slot]->gen != gen) return nullptr;
  return slots_[slot].get();
}

void Worker::Run() {
  ArmWakeup();
  ArmAsync();
  unsigned poll_left = 0;
  for (;;) {
    bool any_queue = false;
    bool any_removing = false;
    bool on_kernel_threads = false;  // io-wq threads have some of our I/O
    for (auto& q : slots_) {
      if (q == nullptr) continue;
      any_queue = true;
      any_removing |= q->removing;
      on_kernel_threads |= q->io_on_kernel_threads && q->busy > 0;
    }
    if (!running_ && !any_queue) break;
    absl::Duration timeout = absl::InfiniteDuration();
    if (any_removing) timeout = kRemovalPoll;
    if (parked_count_ > 0) timeout = std::min(timeout, options_.no_memory_retry);
    if (!release_after_submit_.empty() && ring_->Submit().ok()) {
      // The kernel has copied the get-data READs: free their slots now, not
      // after the next completion (an idle worker would hold them forever).
      release_after_submit_.clear();
    }
    // A pinned worker spinning while an io-wq thread does its I/O holds a CPU
    // that thread needs (WorkerOptions::poll_while_on_kernel_threads).
    if (on_kernel_threads) poll_left = 0;
    const bool poll = poll_left > 0;
    absl::Status s;
    if (poll) {
      --poll_left;
      polls_.fetch_add(1, std::memory_order_relaxed);
      s = ring_->SubmitAndGetEvents();
    } else {
      sleeps_.fetch_add(1, std::memory_order_relaxed);
      s = ring_->SubmitAndWait(timeout);
    }
    release_after_submit_.clear();
    if (!s.ok()) {
      LOG_EVERY_N(ERROR, 100) << "worker " << id() << ": " << s;
      absl::SleepFor(absl::Milliseconds(1));
    }
    if (ring_->DrainCompletions([this](const io_uring_cqe& cqe) { HandleCqe(cqe); }) > 0) {
      if (poll) polls_found_.fetch_add(1, std::memory_order_relaxed);
      poll_left = options_.busy_poll_rounds;
    }
    CheckMemoryPressure();
    RetryParked();
    ReapQueues();
    pool_bytes_.store(pool_->pool_bytes(), std::memory_order_relaxed);
  }
  // Nothing of ours is in flight any more except pending eventfd/fetch reads,
  // which the ring's teardown cancels.
}

void Worker::HandleCqe(const io_uring_cqe& cqe) {
  const Kind kind = static_cast<Kind>(cqe.user_data >> 56);
  if (kind == Kind::kWakeup) {
    RunTasks();
    ArmWakeup();
    return;
  }
  if (kind == Kind::kAsync) {
    DrainAsync();
    ArmAsync();
    return;
  }
  const uint16_t gen = static_cast<uint16_t>(cqe.user_data >> 32);
  const uint16_t slot = static_cast<uint16_t>(cqe.user_data >> 16);
  const uint16_t tag = static_cast<uint16_t>(cqe.user_data);
  Queue* q = FindQueue(slot, gen);
  if (q == nullptr || tag >= q->tags.size()) return;  // a queue already dropped
  if (kind == Kind::kCmd) {
    OnCommand(*q, tag, cqe.res);
  } else if (kind == Kind::kTarget) {
    OnTargetDone(*q, tag, cqe.res);
  } else if (kind == Kind::kCopy) {
    OnCopyDone(*q, tag, cqe.res);
  }
}

void Worker::OnCommand(Queue& q, uint16_t tag, int32_t raw) {
  TagState& t = q.tags[tag];
  const int32_t res = q.channel->TranslateCompletion(tag, raw);
  if (t.phase == TagState::Phase::kGetData) {
    q.SetPhase(tag, TagState::Phase::kIdle);
    if (res == UBLK_IO_RES_OK) {
      StartTarget(q, tag);  // the WRITE's data is in t.buffer now
      return;
    }
    t.buffer.Reset();
    if (res != UBLK_IO_RES_ABORT) {
      LOG(ERROR) << "worker " << id() << ": ublk device " << q.channel->dev_id() << " queue "
                 << q.channel->q_id() << " tag " << tag << ": NEED_GET_DATA failed: " << res;
    }
    q.SetPhase(tag, TagState::Phase::kDone);
    return;
  }
  if (t.phase != TagState::Phase::kFetching) {
    LOG(ERROR) << "worker " << id() << ": unexpected command completion " << res << " for tag "
               << tag;
    return;
  }
  q.SetPhase(tag, TagState::Phase::kIdle);
  if (res == UBLK_IO_RES_OK) {
    BeginRequest(q, tag);
  } else if (res == UBLK_IO_RES_NEED_GET_DATA) {
    const ublksrv_io_desc& d = q.channel->Desc(tag);
    t.io = TargetIo{ublksrv_get_op(&d), d.op_flags & ~0xffu, d.start_sector << 9, d.nr_sectors << 9,
                    nullptr};
    t.next = TagState::Next::kNeedGetData;
    if (AcquireBuffer(q, tag, t.io.len)) Continue(q, tag);
  } else {
    if (res != UBLK_IO_RES_ABORT) {
      LOG(ERROR) << "worker " << id() << ": ublk device " << q.channel->dev_id() << " queue "
                 << q.channel->q_id() << " tag " << tag << ": fetch failed: " << res;
    }
    q.SetPhase(tag, TagState::Phase::kDone);
  }
}

void Worker::BeginRequest(Queue& q, uint16_t tag) {
  TagState& t = q.tags[tag];
  const ublksrv_io_desc& d = q.channel->Desc(tag);
  t.io = TargetIo{ublksrv_get_op(&d), d.op_flags & ~0xffu, d.start_sector << 9, d.nr_sectors << 9,
                  nullptr};
  switch (t.io.op) {
    case UBLK_IO_OP_READ:
    case UBLK_IO_OP_WRITE:
      if (t.io.len == 0) {
        Commit(q, tag, 0);
        return;
      }
      if (q.buf_base >= 0) {
        // Zero copy: the kernel registered the request's pages at this
        // tag's index; the target reads/writes them there.
        t.io.buf_index = q.buf_base + tag;
        t.io.buf =
            reinterpret_cast<void*>(static_cast<uintptr_t>(q.channel->FixedBufferAddress(tag)));
        StartTarget(q, tag);
        return;
      }
      if (q.mode == CopyMode::kUserCopy &&
          (t.io.op == UBLK_IO_OP_READ ? q.target->reads_leave_buffer()
                                      : q.target->writes_ignore_data())) {
        Commit(q, tag, static_cast<int32_t>(t.io.len));  // no data: nothing to copy
        return;
      }
      if (t.io.op == UBLK_IO_OP_READ && zero_region_ != nullptr && t.io.len <= kZeroRegionBytes &&
          q.target->reads_zeros()) {
        t.zero_read = true;
        Commit(q, tag, static_cast<int32_t>(t.io.len));
        return;
      }
      if (q.mode == CopyMode::kGetData && t.io.op == UBLK_IO_OP_WRITE) {
        // Only reached if the device was made without UBLK_F_NEED_GET_DATA.
        LOG_EVERY_N(ERROR, 1000) << "worker " << id() << ": get-data WRITE without NEED_GET_DATA";
        Commit(q, tag, -EIO);
        return;
      }
      t.next = TagState::Next::kStart;
      if (AcquireBuffer(q, tag, t.io.len)) Continue(q, tag);
      return;
    case UBLK_IO_OP_FLUSH:
    case UBLK_IO_OP_DISCARD:
    case UBLK_IO_OP_WRITE_ZEROES:
      StartTarget(q, tag);
      return;
    default:
      Commit(q, tag, -EOPNOTSUPP);
      return;
  }
}

bool Worker::TryAcquire(Queue& q, uint16_t tag, size_t len) {
  pool_touched_.store(true, std::memory_order_relaxed);
  AcquireResult r = pool_->AcquireIoBuffer(len);
  pool_degraded_.store(pool_->degraded(), std::memory_order_relaxed);
  switch (r.outcome) {
    case AcquireOutcome::kPooled:
    case AcquireOutcome::kHeap:
      q.tags[tag].buffer = std::move(r.buffer);
      return true;
    case AcquireOutcome::kNoMemory:
      next_memory_retry_ = clock_.Now() + options_.no_memory_retry;
      return false;
    case AcquireOutcome::kPoolExhausted:
      return false;
  }
  return false;
}

void Worker::Park(Queue& q, uint16_t tag) {
  q.SetPhase(tag, TagState::Phase::kParked);
  const size_t depth = q.tags.size();
  q.parked[(q.parked_head + q.parked_count) % depth] = tag;
  ++q.parked_count;
  ++parked_count_;
  parked_now_.store(parked_count_, std::memory_order_relaxed);
  parked_ever_.fetch_add(1, std::memory_order_relaxed);
}

bool Worker::AcquireBuffer(Queue& q, uint16_t tag, size_t len) {
  if (TryAcquire(q, tag, len)) return true;
  Park(q, tag);
  return false;
}

void Worker::CheckMemoryPressure() {
  if (options_.budget == nullptr) return;
  const uint64_t epoch = options_.budget->pressure_epoch();
  if (epoch == pressure_seen_) return;
  pressure_seen_ = epoch;
  const size_t freed = pool_->ReleaseIfIdle(/*pressure=*/true);
  if (freed > 0) {
    LOG(INFO) << "worker " << id() << ": memory is tight; released its idle buffer pool of "
              << freed << " bytes";
  }
}

void Worker::Continue(Queue& q, uint16_t tag) {
  TagState& t = q.tags[tag];
  q.SetPhase(tag, TagState::Phase::kIdle);
  if (t.next == TagState::Next::kNeedGetData) {
    absl::Status s =
        q.channel->PrepNeedGetData(*ring_, tag, t.buffer.data(), UserData(Kind::kCmd, q, tag));
    if (!s.ok()) {
      LOG(ERROR) << "worker " << id() << ": " << s;
      t.buffer.Reset();
      q.SetPhase(tag, TagState::Phase::kDone);
      return;
    }
    q.SetPhase(tag, TagState::Phase::kGetData);
    return;
  }
  if (q.mode == CopyMode::kUserCopy && t.io.op == UBLK_IO_OP_WRITE) {
    if (QueueCopy(q, tag, t.buffer.data(), t.io.len, /*to_kernel=*/false)) return;
    absl::Status s = q.channel->ReadRequestData(tag, t.buffer.data(), t.io.len, 0);
    if (!s.ok()) {
      LOG_EVERY_N(ERROR, 1000) << "worker " << id() << ": " << s;
      Commit(q, tag, -EIO);
      return;
    }
  }
  StartTarget(q, tag);
}

void Worker::StartTarget(Queue& q, uint16_t tag) {
  TagState& t = q.tags[tag];
  if (t.io.buf_index < 0) t.io.buf = t.buffer ? t.buffer.data() : nullptr;
  q.SetPhase(tag, TagState::Phase::kTargetIo);
  const uint64_t user_data = UserData(Kind::kTarget, q, tag);
  async_->Prepare(t.async, user_data);
  t.io.async = &t.async;
  std::optional<int32_t> r = q.target->StartIo(*ring_, t.io, user_data);
  if (r.has_value()) {
    q.SetPhase(tag, TagState::Phase::kIdle);
    Commit(q, tag, *r);
  }
}

void Worker::OnTargetDone(Queue& q, uint16_t tag, int32_t raw) {
  TagState& t = q.tags[tag];
  if (t.phase != TagState::Phase::kTargetIo) return;
  q.SetPhase(tag, TagState::Phase::kIdle);
  std::optional<int32_t> r = q.target->FinishIo(t.io, raw);
  if (!r.has_value()) {
    StartTarget(q, tag);
    return;
  }
  Commit(q, tag, *r);
}

bool Worker::QueueCopy(Queue& q, uint16_t tag, void* data, size_t len, bool to_kernel) {
  if (!options_.user_copy_on_ring) return false;
  const uint64_t user_data = UserData(Kind::kCopy, q, tag);
  absl::Status s = to_kernel ? q.channel->PrepWriteResponseData(*ring_, tag, data, len, user_data)
                             : q.channel->PrepReadRequestData(*ring_, tag, data, len, user_data);
  if (!s.ok()) {
    LOG_EVERY_N(WARNING, 1000) << "worker " << id() << ": " << s << "; copying synchronously";
    return false;
  }
  q.SetPhase(tag, TagState::Phase::kCopying);
  return true;
}

void Worker::OnCopyDone(Queue& q, uint16_t tag, int32_t res) {
  TagState& t = q.tags[tag];
  if (t.phase != TagState::Phase::kCopying) return;
  q.SetPhase(tag, TagState::Phase::kIdle);
  const bool to_kernel = t.io.op == UBLK_IO_OP_READ;
  const size_t len = to_kernel ? static_cast<size_t>(t.result) : t.io.len;
  char* data = static_cast<char*>(to_kernel ? ReadData(t) : t.buffer.data());
  absl::Status s = absl::OkStatus();
  if (res < 0) {
    s = UblkErrnoToStatus(
        -res, absl::StrCat("ublk device ", q.channel->dev_id(), " queue ", q.channel->q_id(),
                           " tag ", tag, ": user copy ", to_kernel ? "to" : "from", " the kernel"));
  } else if (static_cast<size_t>(res) < len) {
    // Short: the rest synchronously (the kernel copies whole requests, so
    // this is not expected).
    const size_t done = static_cast<size_t>(res);
    s = to_kernel ? q.channel->WriteResponseData(tag, data + done, len - done, done)
                  : q.channel->ReadRequestData(tag, data + done, len - done, done);
  }
  if (!s.ok()) {
    LOG_EVERY_N(ERROR, 1000) << "worker " << id() << ": " << s;
  }
  if (to_kernel) {
    CommitNow(q, tag, s.ok() ? t.result : -EIO);
  } else if (s.ok()) {
    StartTarget(q, tag);
  } else {
    Commit(q, tag, -EIO);
  }
}

void* Worker::ReadData(const TagState& t) const {
  return t.zero_read ? zero_region_ : (t.buffer ? t.buffer.data() : nullptr);
}

void Worker::Commit(Queue& q, uint16_t tag, int32_t result) {
  TagState& t = q.tags[tag];
  if (t.io.op == UBLK_IO_OP_READ && q.mode == CopyMode::kUserCopy && result > 0) {
    void* data = ReadData(t);
    if (data != nullptr) {
      t.result = result;
      if (QueueCopy(q, tag, data, static_cast<size_t>(result), /*to_kernel=*/true)) return;
      absl::Status s = q.channel->WriteResponseData(tag, data, static_cast<size_t>(result), 0);
      if (!s.ok()) {
        LOG_EVERY_N(ERROR, 1000) << "worker " << id() << ": " << s;
        result = -EIO;
      }
    }
  }
  CommitNow(q, tag, result);
}

void Worker::CommitNow(Queue& q, uint16_t tag, int32_t result) {
  TagState& t = q.tags[tag];
  void* buf = nullptr;
  if (t.io.op == UBLK_IO_OP_READ && q.mode == CopyMode::kGetData) {
    // Get-data: the kernel refuses a READ commit without an address even
    // when it copies nothing (error or empty result).
    static uint64_t no_data;
    void* const data = ReadData(t);
    buf = data != nullptr ? data : &no_data;
  }
  t.zero_read = false;
  // Counted before the commit: the fake kernel completes the request inside
  // PrepCommitAndFetch, and a reader woken by it must see the count.
  completed_ios_.fetch_add(1, std::memory_order_relaxed);
  absl::Status s =
      q.channel->PrepCommitAndFetch(*ring_, tag, result, buf, UserData(Kind::kCmd, q, tag));
  if (t.buffer && buf == t.buffer.data()) {
    release_after_submit_.push_back(std::move(t.buffer));
  } else {
    t.buffer.Reset();
  }
  if (!s.ok()) {
    LOG(ERROR) << "worker " << id() << ": " << s;
    q.SetPhase(tag, TagState::Phase::kDone);
    return;
  }
  q.SetPhase(tag, TagState::Phase::kFetching);
}

void Worker::RetryParked() {
  if (parked_count_ == 0) return;
  if (!slot_released_ && clock_.Now() < next_memory_retry_) return;
  slot_released_ = false;
  // Oldest first within a queue; the queue served first rotates, so one
  // queue's parked tags cannot starve another's.
  const size_t n = slots_.size();
  for (size_t k = 0; k < n && parked_count_ > 0; ++k) {
    const size_t i = (retry_cursor_ + k) % n;
    Queue* q = slots_[i].get();
    while (q != nullptr && q->parked_count > 0) {
      const uint16_t tag = q->parked[q->parked_head];
      TagState& t = q->tags[tag];
      if (t.phase == TagState::Phase::kParked && !TryAcquire(*q, tag, t.io.len)) {
        retry_cursor_ = i;  // memory is still short: resume here next time
        return;
      }
      q->parked_head = static_cast<uint16_t>((q->parked_head + 1) % q->tags.size());
      --q->parked_count;
      --parked_count_;
      parked_now_.store(parked_count_, std::memory_order_relaxed);
      if (t.phase != TagState::Phase::kParked) continue;
      q->SetPhase(tag, TagState::Phase::kIdle);
      Continue(*q, tag);
    }
  }
  retry_cursor_ = n == 0 ? 0 : (retry_cursor_ + 1) % n;
}

void Worker::ReapQueues() {
  // The clock only when a queue is being removed: this runs on every pass
  // of the loop, and no clock read is taken per I/O.
  std::optional<absl::Time> now;
  for (auto& q : slots_) {
    if (q == nullptr || !q->removing || q->busy > 0) continue;
    const bool drained = q->done_tags == q->tags.size();
    if (!drained && !now.has_value()) now = clock_.Now();
    if (drained || *now >= q->deadline) DropQueue(*q, drained);
  }
}

void Worker::DropQueue(Queue& q, bool drained) {
  VLOG(1) << "worker " << id() << ": dropping queue " << q.id << " (ublk device "
          << q.channel->dev_id() << " queue " << q.channel->q_id() << ")"
          << (drained ? "" : " with fetches still pending");
  auto removed = std::move(q.removed);
  for (auto& t : q.tags) t.buffer.Reset();
  parked_count_ -= q.parked_count;
  parked_now_.store(parked_count_, std::memory_order_relaxed);
  if (q.mode == CopyMode::kGetData) get_data_depth_ -= q.tags.size();
  if (q.mode != CopyMode::kZeroCopy) {
    copy_demand_ -= q.tags.size();
    pool_->SetDemand(copy_demand_);
    // Nothing left to serve from it: give the pool back.
    if (copy_demand_ == 0) pool_->ReleaseIfIdle(/*pressure=*/false);
  }
  const uint16_t slot = q.slot;
  const int32_t buf_base = q.buf_base;
  const uint16_t depth = static_cast<uint16_t>(q.tags.size());
  // SQEs prepared for this queue but not yet submitted name the channel's fds
  // by number. Submit them before the channel closes: a recovery opens the
  // next channel at once, may get the same numbers, and a late stale FETCH or
  // COMMIT would then land on the new channel and steal its completions.
  if (auto submitted = ring_->Submit(); !submitted.ok()) {
    LOG(WARNING) << "worker " << id() << ": submitting before dropping queue " << q.id << ": "
                 << submitted.status();
  }
  slots_[slot].reset();  // closes the channel
  // After the close: the kernel registers nothing more for this queue.
  if (buf_base >= 0) ReleaseBufferRange(static_cast<uint16_t>(buf_base), depth);
  queue_count_.fetch_sub(1, std::memory_order_relaxed);
  if (removed != nullptr) {
    removed->drained = drained;
    removed->done.Notify();
  }
}

absl::Status Worker::EnsureBufferTable() {
  if (buffer_table_) return absl::OkStatus();
  if (options_.fixed_buffer_slots == 0 || options_.fixed_buffer_slots > UINT16_MAX + 1u) {
    return absl::InvalidArgumentError(absl::StrCat("worker ", id(), ": fixed_buffer_slots ",
                                                   options_.fixed_buffer_slots,
                                                   " out of range 1..65536"));
  }
  int ret = io_uring_register_buffers_sparse(ring_->raw(), options_.fixed_buffer_slots);
  if (ret < 0) {
    return absl::ErrnoToStatus(
        -ret, absl::StrCat("worker ", id(), ": registering a sparse buffer table of ",
                           options_.fixed_buffer_slots, " slots on its io_uring (zero copy)"));
  }
  buffer_table_ = true;
  LOG(INFO) << "worker " << id() << ": registered-buffer table of " << options_.fixed_buffer_slots
            << " slots for zero copy";
  return absl::OkStatus();
}

absl::StatusOr<uint16_t> Worker::AllocBufferRange(uint16_t n) {
  uint32_t next = 0;  // first index after the previous used range
  auto it = buffer_ranges_.begin();
  for (;; ++it) {
    const uint32_t end = it == buffer_ranges_.end() ? options_.fixed_buffer_slots : it->first;
    if (end >= next && end - next >= n) break;
    if (it == buffer_ranges_.end()) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "worker ", id(), ": registered-buffer table full (", fixed_buffers_in_use(), " of ",
          options_.fixed_buffer_slots, " slots in use, no free range of ", n, ")"));
    }
    next = it->first + it->second;
  }
  buffer_ranges_.insert(it, {next, n});
  fixed_buffers_in_use_.fetch_add(n, std::memory_order_relaxed);
  return static_cast<uint16_t>(next);
}

void Worker::ReleaseBufferRange(uint16_t base, uint16_t n) {
  std::vector<iovec> empty(n, iovec{nullptr, 0});
  int ret = io_uring_register_buffers_update_tag(ring_->raw(), base, empty.data(), nullptr, n);
  if (ret < 0) {
    // Keep the range out of use: a later request registered there would
    // find its slot taken and fail.
    LOG(ERROR) << "worker " << id() << ": clearing registered buffers " << base << ".."
               << base + n - 1 << " failed (" << ublk::Errno(-ret)
               << "); those indices stay reserved";
    return;
  }
  for (auto it = buffer_ranges_.begin(); it != buffer_ranges_.end(); ++it) {
    if (it->first == base) {
      fixed_buffers_in_use_.fetch_sub(it->second, std::memory_order_relaxed);
      buffer_ranges_.erase(it);
      return;
    }
  }
}

}  // namespace ublk
