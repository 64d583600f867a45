#include "ublk/null_target.h"

#include <cerrno>
#include <cstring>

#include "ublk/uapi.h"

namespace ublk {

std::optional<int32_t> NullTarget::StartIo(Ring&, const TargetIo& io, uint64_t) {
  switch (io.op) {
    case UBLK_IO_OP_READ:
      std::memset(io.buf, 0, io.len);
      return static_cast<int32_t>(io.len);
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
