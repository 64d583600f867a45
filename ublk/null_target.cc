#include "ublk/null_target.h"

#include <fcntl.h>

#include <cerrno>
#include <cstring>

#include "ublk/uapi.h"

namespace ublk {

NullTarget::NullTarget(uint64_t size_bytes, Reads reads)
    : size_bytes_(size_bytes), reads_(reads), zero_fd_(open("/dev/zero", O_RDONLY | O_CLOEXEC)) {}

std::optional<int32_t> NullTarget::StartIo(Ring& ring, const TargetIo& io, uint64_t user_data) {
  switch (io.op) {
    case UBLK_IO_OP_READ: {
      if (io.buf_index < 0) {
        std::memset(io.buf, 0, io.len);
        return static_cast<int32_t>(io.len);
      }
      if (reads_ == Reads::kUntouched) return static_cast<int32_t>(io.len);
      if (!zero_fd_.valid()) return -EIO;
      io_uring_sqe* sqe = ring.GetSqe();
      if (sqe == nullptr) return -EAGAIN;
      io_uring_prep_read_fixed(sqe, zero_fd_.get(), io.buf, io.len, 0, io.buf_index);
      sqe->user_data = user_data;
      return std::nullopt;
    }
    case UBLK_IO_OP_WRITE:
      return static_cast<int32_t>(io.len);
    case UBLK_IO_OP_FLUSH:
    case UBLK_IO_OP_DISCARD:
    case UBLK_IO_OP_WRITE_ZEROES:
      return 0;
    default:
      return -EOPNOTSUPP;
  }
}

std::optional<int32_t> NullTarget::FinishIo(const TargetIo&, int32_t cqe_res) { return cqe_res; }

}  // namespace ublk
