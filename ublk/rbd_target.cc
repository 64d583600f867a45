#include "ublk/rbd_target.h"

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/registry.h"
#include "ublk/uapi.h"

namespace ublk {

RbdMetrics::RbdMetrics(prometheus::Registry* registry) {
  if (registry == nullptr) return;
  timeouts_counter_ = &prometheus::BuildCounter()
                           .Name("ublk_csi_rbd_op_timeouts_total")
                           .Help(
                               "RBD I/Os failed with EIO because librbd did not complete them "
                               "within the op timeout")
                           .Register(*registry)
                           .Add({});
  errors_counter_ = &prometheus::BuildCounter()
                         .Name("ublk_csi_rbd_io_errors_total")
                         .Help("RBD I/Os completed with an error (timeouts included)")
                         .Register(*registry)
                         .Add({});
}

void RbdMetrics::CountTimeout() {
  timeouts_.fetch_add(1, std::memory_order_relaxed);
  if (timeouts_counter_ != nullptr) timeouts_counter_->Increment();
}

void RbdMetrics::CountError() {
  errors_.fetch_add(1, std::memory_order_relaxed);
  if (errors_counter_ != nullptr) errors_counter_->Increment();
}

int32_t RbdResultToUblk(int64_t r) {
  if (r >= 0) return 0;
  switch (-r) {
    case ENOSPC:
    case EDQUOT:
      return -ENOSPC;
    case EOPNOTSUPP:
      return -EOPNOTSUPP;
    default:
      return -EIO;
  }
}

absl::StatusOr<std::unique_ptr<RbdTarget>> RbdTarget::Open(
    std::shared_ptr<RadosConnection> connection, const RbdTargetOptions& o) {
  if (connection == nullptr) return absl::InvalidArgumentError("rbd target: no connection");
  if (o.pool.empty()) return absl::InvalidArgumentError("rbd target: empty pool name");
  if (o.image.empty()) return absl::InvalidArgumentError("rbd target: empty image name");
  std::string spec = o.pool_namespace.empty()
                         ? absl::StrCat(o.pool, "/", o.image)
                         : absl::StrCat(o.pool, "/", o.pool_namespace, "/", o.image);
  absl::StatusOr<std::unique_ptr<RbdImage>> image =
      connection->OpenImage(o.pool, o.pool_namespace, o.image);
  if (!image.ok()) return image.status();
  absl::StatusOr<uint64_t> image_size = (*image)->Size();
  if (!image_size.ok()) {
    return absl::Status(image_size.status().code(),
                        absl::StrCat("rbd target ", spec, ": ", image_size.status().message()));
  }
  uint64_t size = o.size_bytes != 0 ? o.size_bytes : *image_size / 512 * 512;
  if (size == 0 || size % 512 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("rbd target ", spec, ": volume size ", size,
                                                   " is not a positive multiple of 512"));
  }
  if (size > *image_size) {
    return absl::FailedPreconditionError(
        absl::StrCat("rbd target ", spec, ": image has ", *image_size,
                     " bytes, smaller than the volume (", size, ")"));
  }
  LOG(INFO) << "rbd target " << spec << " on " << connection->cluster_id() << ": opened, " << size
            << " bytes";
  return std::unique_ptr<RbdTarget>(
      new RbdTarget(std::move(connection), std::move(*image), std::move(spec), size, o.metrics));
}

RbdTarget::RbdTarget(std::shared_ptr<RadosConnection> connection, std::unique_ptr<RbdImage> image,
                     std::string spec, uint64_t size, RbdMetrics* metrics)
    : connection_(std::move(connection)),
      image_(std::move(image)),
      spec_(std::move(spec)),
      size_bytes_(size),
      metrics_(metrics) {}

RbdTarget::~RbdTarget() { image_.reset(); }

absl::Status RbdTarget::Grow(uint64_t new_size) {
  absl::StatusOr<uint64_t> image_size = image_->Size();
  if (!image_size.ok()) {
    return absl::Status(image_size.status().code(),
                        absl::StrCat("rbd target ", spec_, ": ", image_size.status().message()));
  }
  if (*image_size < new_size) {
    return absl::FailedPreconditionError(absl::StrCat("rbd target ", spec_, ": image has ",
                                                      *image_size, " bytes, less than ", new_size));
  }
  uint64_t cur = size_bytes_.load(std::memory_order_relaxed);
  while (cur < new_size &&
         !size_bytes_.compare_exchange_weak(cur, new_size, std::memory_order_relaxed)) {
  }
  return absl::OkStatus();
}

std::optional<int32_t> RbdTarget::StartIo(Ring&, const TargetIo& io, uint64_t) {
  if (io.async == nullptr) return -EIO;  // not called by a worker
  const uint64_t size = size_bytes();
  if (io.op != UBLK_IO_OP_FLUSH && (io.offset > size || io.len > size - io.offset)) {
    return -EIO;
  }
  if ((io.op == UBLK_IO_OP_READ || io.op == UBLK_IO_OP_WRITE) &&
      (io.buf_index >= 0 || io.buf == nullptr)) {
    // A zero-copy request's pages are no user memory librbd could use;
    // Export refuses that mode for this target, so this is a bug.
    LOG_EVERY_N(ERROR, 1000) << "rbd target " << spec_ << ": READ/WRITE without a user buffer";
    return -EIO;
  }
  int r = 0;
  switch (io.op) {
    case UBLK_IO_OP_READ:
      r = image_->AioRead(io.offset, io.len, static_cast<char*>(io.buf), io.async);
      break;
    case UBLK_IO_OP_WRITE:
      // With rbd_cache off a completed write is on the OSDs: FUA needs
      // nothing more. With the cache on it would need a flush after it.
      r = image_->AioWrite(io.offset, io.len, static_cast<const char*>(io.buf), io.async);
      break;
    case UBLK_IO_OP_FLUSH:
      r = image_->AioFlush(io.async);
      break;
    case UBLK_IO_OP_DISCARD:
      r = image_->AioDiscard(io.offset, io.len, io.async);
      break;
    case UBLK_IO_OP_WRITE_ZEROES:
      r = image_->AioWriteZeroes(io.offset, io.len, io.async);
      break;
    default:
      return -EOPNOTSUPP;
  }
  if (r < 0) {
    // Not started: answer now, with the same mapping as a completion.
    std::optional<int32_t> res = FinishIo(io, r);
    return res.has_value() ? *res : -EIO;
  }
  return std::nullopt;
}

std::optional<int32_t> RbdTarget::FinishIo(const TargetIo& io, int32_t res) {
  if (res < 0) {
    if (metrics_ != nullptr) {
      metrics_->CountError();
      if (res == -ETIMEDOUT) metrics_->CountTimeout();
    }
    if (res == -ESHUTDOWN) {
      connection_->MarkBad(absl::StrCat("image ", spec_, ": I/O refused, client blocklisted"));
    }
    LOG_EVERY_N(WARNING, 1000) << "rbd target " << spec_ << ": op " << int{io.op} << " at "
                               << io.offset << " len " << io.len << " failed: " << res
                               << " (logged every 1000)";
    return RbdResultToUblk(res);
  }
  switch (io.op) {
    case UBLK_IO_OP_READ:
      if (static_cast<uint32_t>(res) < io.len) {
        // librbd cuts a read at the image's end (the image shrank under
        // us): the rest reads as zeros, as a hole would.
        std::memset(static_cast<char*>(io.buf) + res, 0, io.len - static_cast<uint32_t>(res));
      }
      return static_cast<int32_t>(io.len);
    case UBLK_IO_OP_WRITE:
      // librbd completes a whole write with 0 (not the byte count, unlike
      // a read), and never a part of one.
      return static_cast<int32_t>(io.len);
    default:
      return 0;
  }
}

}  // namespace ublk
