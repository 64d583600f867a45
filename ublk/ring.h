// Ring: the owner of one io_uring (liburing 2.3). Used by exactly one thread
// (a worker, or one control command at a time); not thread-safe. Everything
// that ublk does through io_uring (URING_CMD control and I/O commands, the
// targets' file I/O, eventfd wakeups) is prepared on a Ring.
#pragma once

#include <liburing.h>

#include <cstdint>
#include <memory>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace ublk {

class Ring {
 public:
  // `entries` SQ entries (rounded up to a power of two by the kernel); `flags`
  // are IORING_SETUP_* flags, e.g. IORING_SETUP_SQE128 for the control ring.
  static absl::StatusOr<std::unique_ptr<Ring>> Create(unsigned entries, unsigned flags = 0);
  // A ring that only the calling thread will ever submit to or register on
  // (a worker's), with the cheapest task-run mode the kernel has: the first
  // of COOP_TASKRUN|SINGLE_ISSUER|DEFER_TASKRUN (6.1+), COOP_TASKRUN|
  // SINGLE_ISSUER (6.0), COOP_TASKRUN (5.19) and none that it accepts; a
  // CQ of `cq_entries` (0: the kernel's default, twice the SQ); the ring fd
  // registered for this thread where the kernel allows it. With DEFER_TASKRUN
  // completions are only posted while the thread waits in SubmitAndWait.
  // `allowed` masks the flags tried (tests and kernels that misbehave).
  static constexpr unsigned kSingleIssuerFlags =
      IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
  static absl::StatusOr<std::unique_ptr<Ring>> CreateSingleIssuer(
      unsigned entries, unsigned cq_entries = 0, unsigned allowed = kSingleIssuerFlags);
  ~Ring();
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  // A zeroed SQE (all 128 bytes on an SQE128 ring). When the SQ is full it
  // first submits what is queued; nullptr only if that submission fails.
  io_uring_sqe* GetSqe();
  // Submits queued SQEs; returns how many the kernel took.
  absl::StatusOr<int> Submit();
  // Submits and waits until at least one CQE is ready, or `timeout` passes
  // (absl::InfiniteDuration() waits forever). EINTR, ETIME, EAGAIN and EBUSY
  // (the CQ is full until drained) are not errors.
  absl::Status SubmitAndWait(absl::Duration timeout);
  // Submits and reaps without waiting: runs the thread's deferred task work
  // (DEFER_TASKRUN), so completions that are due are posted. The same
  // results as SubmitAndWait's are not errors.
  absl::Status SubmitAndGetEvents();
  // Calls `fn` for every ready CQE (without waiting) and marks them seen.
  // Returns how many were handled.
  int DrainCompletions(absl::FunctionRef<void(const io_uring_cqe&)> fn);

  bool sqe128() const { return sqe128_; }
  // The IORING_SETUP_* flags the ring was made with.
  unsigned flags() const { return flags_; }
  bool ring_fd_registered() const { return ring_fd_registered_; }
  io_uring* raw() { return &ring_; }

 private:
  Ring() = default;
  io_uring ring_{};
  bool sqe128_ = false;
  unsigned flags_ = 0;
  bool ring_fd_registered_ = false;
};

}  // namespace ublk
