// Target: what an export serves (a backing file, or nothing for benchmarks).
// The worker hands each block request to its target; the target puts the
// file I/O on the worker's Ring, so target and ublk commands share one ring
// and one thread. A target object may serve several queues (several
// workers): StartIo/FinishIo must be safe to call from different worker
// threads at once.
#pragma once

#include <cstdint>
#include <optional>

#include "ublk/async_completion.h"
#include "ublk/ring.h"
#include "ublk/uapi.h"

namespace ublk {

struct TargetIo {
  uint8_t op = 0;       // UBLK_IO_OP_*
  uint32_t flags = 0;   // UBLK_IO_F_* (op_flags >> 8 << 8)
  uint64_t offset = 0;  // bytes
  uint32_t len = 0;     // bytes
  // READ: filled by the target; WRITE: the data. With buf_index >= 0 (zero
  // copy) it is not a user pointer but the address of the request's bytes in
  // the fixed buffer `buf_index` of the worker's ring (0 for the kernel's
  // registered request pages): only fixed-buffer I/O may use it.
  void* buf = nullptr;
  int32_t buf_index = -1;
  // Set by the worker for every StartIo: a target that completes the I/O
  // off the ring (on a library's thread) posts the result here exactly once
  // instead of putting an SQE on the ring; FinishIo then gets it on the
  // worker's thread like a CQE's res. Null outside a worker (tests calling
  // StartIo directly with a ring-only target).
  AsyncCompletion* async = nullptr;
};

class Target {
 public:
  virtual ~Target() = default;

  virtual uint64_t size_bytes() const = 0;
  // Whether the device should announce discard and write-zeroes.
  virtual bool supports_discard() const = 0;
  virtual const char* name() const = 0;
  // Whether every READ returns zeros (the null target). The worker then
  // answers a copy-mode READ from a read-only zero mapping of its own: no
  // bounce buffer, no memset, and still no stale bytes handed to the reader.
  virtual bool reads_zeros() const { return false; }
  // Whether a READ completes without data (null_blk's behaviour, see
  // NullTarget::Reads): in user copy the worker copies nothing, in zero copy
  // the target writes nothing; get-data still answers from the zero mapping.
  virtual bool reads_leave_buffer() const { return false; }
  // Whether a WRITE's data is never looked at (null_blk's behaviour): in
  // user copy the worker then commits the WRITE without copying its bytes
  // out of the kernel (get-data must still take them: the kernel copies
  // before the server sees the request's result).
  virtual bool writes_ignore_data() const { return false; }
  // Whether READ/WRITE need the data in user memory (a library such as
  // librbd takes a plain pointer): such a target cannot serve a zero-copy
  // queue, whose requests live in the ring's registered buffer table, and
  // Export refuses that mode for it (CopyModeFor picks a copy mode instead).
  virtual bool needs_user_buffer() const { return false; }
  // Whether the I/O this target puts on the ring for a queue (in zero copy
  // or not) is CPU work of io_uring's io-wq threads, not a device's: a file
  // in memory, which io_uring cannot read or write without blocking. A
  // pinned worker then does not busy-poll while such I/O is in flight (its
  // spinning would hold a CPU the io-wq thread needs;
  // WorkerOptions::poll_while_on_kernel_threads).
  virtual bool ring_io_on_kernel_threads(bool /*zero_copy*/) const { return false; }

  // Starts `io`. Either puts exactly one SQE on `ring` with `user_data` and
  // returns nullopt (the CQE's res then goes to FinishIo), or hands the I/O
  // to something that will call io.async->Post(res) exactly once and returns
  // nullopt (res then goes to FinishIo the same way), or completes at once
  // and returns the ublk result (bytes for READ/WRITE, 0, or -errno).
  virtual std::optional<int32_t> StartIo(Ring& ring, const TargetIo& io, uint64_t user_data) = 0;
  // The ublk result for the CQE of an op started by StartIo, or nullopt: the
  // target changed how it does I/O (e.g. O_DIRECT refused) and the caller
  // must StartIo again.
  virtual std::optional<int32_t> FinishIo(const TargetIo& io, int32_t cqe_res) = 0;
};

}  // namespace ublk
