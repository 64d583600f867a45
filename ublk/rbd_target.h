// RbdTarget: a volume stored in a Ceph RBD image, served through librbd's
// aio calls on the connection shared by every volume of that cluster
// (RadosConnections). librbd completes on its own threads; the completion
// goes back to the worker that owns the request through the worker's
// AsyncCompletionQueue (a lock-free push and an eventfd the worker's ring
// reads): no thread of ours per I/O, no lock.
//
// Copy modes: librbd reads into and writes from a plain user pointer, so a
// zero-copy queue (request pages in the ring's registered buffer table,
// reachable only by fixed-buffer io_uring ops) cannot be served:
// needs_user_buffer() is true, Export refuses zero copy for this target and
// CopyModeFor() gives the best copy mode the kernel has (user copy, else
// get-data). "Zero copy" for RBD therefore means: one copy between the
// request pages and the worker's bounce buffer (the kernel's, in pread/pwrite
// of /dev/ublkcN or the get-data commit), and librbd's own (reads: from the
// messenger's buffers into ours; writes: into a bufferlist unless librbd's
// rbd_disable_zero_copy_writes is off).
//
// Results: READ/WRITE give len bytes; a READ that librbd cuts short (image
// shrunk under us) is zero-filled to len; ETIMEDOUT (the connection's op
// timeout, rados_osd_op_timeout) becomes EIO and is counted; ENOSPC/EDQUOT
// become ENOSPC, EOPNOTSUPP stays; everything else is EIO. ESHUTDOWN (this
// client was blocklisted) also marks the connection bad.
// Thread-safe: several workers may serve queues of one image.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "ublk/rbd_cluster.h"
#include "ublk/target.h"

namespace prometheus {
class Registry;
class Counter;
}  // namespace prometheus

namespace ublk {

// Node-wide RBD I/O metrics, shared by every RbdTarget (nullable registry):
//   ublk_csi_rbd_op_timeouts_total   I/Os failed with EIO after the op timeout
//   ublk_csi_rbd_io_errors_total     I/Os failed for any reason (timeouts too)
class RbdMetrics {
 public:
  explicit RbdMetrics(prometheus::Registry* registry);
  void CountTimeout();
  void CountError();
  uint64_t timeouts() const { return timeouts_.load(std::memory_order_relaxed); }
  uint64_t errors() const { return errors_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> timeouts_{0};
  std::atomic<uint64_t> errors_{0};
  prometheus::Counter* timeouts_counter_ = nullptr;
  prometheus::Counter* errors_counter_ = nullptr;
};

struct RbdTargetOptions {
  std::string pool;
  std::string pool_namespace;  // "": the default namespace
  std::string image;
  // The volume size; 0: the image's size (rounded down to 512 bytes). A
  // size larger than the image is FailedPrecondition.
  uint64_t size_bytes = 0;
  RbdMetrics* metrics = nullptr;  // nullable; must outlive the target
};

// -errno from librbd -> the ublk result (see above).
int32_t RbdResultToUblk(int64_t rbd_result);

class RbdTarget final : public Target {
 public:
  // Opens the image on `connection` (kept alive by the target).
  // InvalidArgument for an empty pool/image name; the connection's errors
  // (NotFound naming the image, PermissionDenied, Unavailable).
  static absl::StatusOr<std::unique_ptr<RbdTarget>> Open(
      std::shared_ptr<RadosConnection> connection, const RbdTargetOptions& options);
  // Closes the image (librbd waits for the I/O in flight).
  ~RbdTarget() override;

  uint64_t size_bytes() const override { return size_bytes_.load(std::memory_order_relaxed); }
  bool supports_discard() const override { return true; }
  const char* name() const override { return "rbd"; }
  bool needs_user_buffer() const override { return true; }
  // Raises the volume size (live resize) once the image is at least that
  // large (re-read from librbd); FailedPrecondition if it is not. Never
  // shrinks. Any thread.
  absl::Status Grow(uint64_t new_size);

  std::optional<int32_t> StartIo(Ring& ring, const TargetIo& io, uint64_t user_data) override;
  std::optional<int32_t> FinishIo(const TargetIo& io, int32_t res) override;

  const std::shared_ptr<RadosConnection>& connection() const { return connection_; }
  // "pool/image" or "pool/namespace/image".
  const std::string& spec() const { return spec_; }

 private:
  RbdTarget(std::shared_ptr<RadosConnection> connection, std::unique_ptr<RbdImage> image,
            std::string spec, uint64_t size, RbdMetrics* metrics);

  const std::shared_ptr<RadosConnection> connection_;
  std::unique_ptr<RbdImage> image_;
  const std::string spec_;
  std::atomic<uint64_t> size_bytes_;
  RbdMetrics* const metrics_;
};

}  // namespace ublk
