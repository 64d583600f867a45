#include "ublk/ring.h"

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace ublk {
namespace {
// An io_uring_enter result: interrupted, timed out, or out of room for the
// moment (EAGAIN, EBUSY: the CQ is full until it is drained) are not errors.
absl::Status EnterStatus(int ret, const char* what) {
  if (ret >= 0 || ret == -EINTR || ret == -ETIME || ret == -EAGAIN || ret == -EBUSY) {
    return absl::OkStatus();
  }
  return absl::ErrnoToStatus(-ret, what);
}
}  // namespace

absl::StatusOr<std::unique_ptr<Ring>> Ring::Create(unsigned entries, unsigned flags) {
  std::unique_ptr<Ring> ring(new Ring());
  int ret = io_uring_queue_init(entries, &ring->ring_, flags);
  if (ret < 0) {
    return absl::ErrnoToStatus(-ret, absl::StrCat("io_uring_queue_init(entries=", entries,
                                                  ", flags=0x", absl::Hex(flags), ")"));
  }
  ring->sqe128_ = (flags & IORING_SETUP_SQE128) != 0;
  ring->flags_ = flags;
  return ring;
}

absl::StatusOr<std::unique_ptr<Ring>> Ring::CreateSingleIssuer(unsigned entries,
                                                               unsigned cq_entries,
                                                               unsigned allowed) {
  // Best first; each step drops the newest flag (EINVAL: the kernel lacks it).
  static constexpr unsigned kTries[] = {
      IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
      IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER,
      IORING_SETUP_COOP_TASKRUN,
      0,
  };
  int ret = -EINVAL;
  unsigned flags = 0;
  std::unique_ptr<Ring> ring(new Ring());
  for (unsigned want : kTries) {
    if ((want & allowed) != want) continue;
    flags = want | (cq_entries > 0 ? IORING_SETUP_CQSIZE : 0u);
    io_uring_params p{};
    p.flags = flags;
    p.cq_entries = cq_entries;
    ret = io_uring_queue_init_params(entries, &ring->ring_, &p);
    if (ret != -EINVAL || want == 0) break;
  }
  if (ret < 0) {
    return absl::ErrnoToStatus(
        -ret, absl::StrCat("io_uring_queue_init(entries=", entries, ", cq_entries=", cq_entries,
                           ", flags=0x", absl::Hex(flags), ")"));
  }
  ring->flags_ = flags;
  // One fdget less per io_uring_enter (5.18+); without it liburing uses the fd.
  ring->ring_fd_registered_ = io_uring_register_ring_fd(&ring->ring_) == 1;
  return ring;
}

Ring::~Ring() {
  // liburing unregisters a registered ring fd itself; from another thread
  // than the one that registered it that fails harmlessly and the entry goes
  // with that thread.
  io_uring_queue_exit(&ring_);
}

io_uring_sqe* Ring::GetSqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (sqe == nullptr) {
    if (io_uring_submit(&ring_) < 0) return nullptr;
    sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) return nullptr;
  }
  // Clear through a byte pointer: gcc 12 warns falsely (array-bounds) when
  // memset is given the io_uring_sqe type with 128 bytes.
  unsigned char* bytes = reinterpret_cast<unsigned char*>(sqe);
  std::memset(bytes, 0, sqe128_ ? 2 * sizeof(io_uring_sqe) : sizeof(io_uring_sqe));
  return sqe;
}

absl::StatusOr<int> Ring::Submit() {
  int ret;
  do {
    ret = io_uring_submit(&ring_);
  } while (ret == -EINTR);
  if (ret < 0) return absl::ErrnoToStatus(-ret, "io_uring_submit");
  return ret;
}

absl::Status Ring::SubmitAndWait(absl::Duration timeout) {
  int ret;
  if (timeout == absl::InfiniteDuration()) {
    ret = io_uring_submit_and_wait(&ring_, 1);
  } else {
    __kernel_timespec ts =
        absl::ToTimespec(timeout).tv_sec >= 0
            ? __kernel_timespec{absl::ToTimespec(timeout).tv_sec, absl::ToTimespec(timeout).tv_nsec}
            : __kernel_timespec{0, 0};
    io_uring_cqe* cqe = nullptr;
    ret = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
  }
  return EnterStatus(ret, "io_uring_submit_and_wait");
}

absl::Status Ring::SubmitAndGetEvents() {
  return EnterStatus(io_uring_submit_and_get_events(&ring_), "io_uring_submit_and_get_events");
}

int Ring::DrainCompletions(absl::FunctionRef<void(const io_uring_cqe&)> fn) {
  int n = 0;
  io_uring_cqe* cqe;
  while (io_uring_peek_cqe(&ring_, &cqe) == 0) {
    io_uring_cqe copy = *cqe;
    io_uring_cqe_seen(&ring_, cqe);
    fn(copy);
    ++n;
  }
  return n;
}

}  // namespace ublk
