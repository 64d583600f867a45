#include "ublk/kernel.h"

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "ublk/errno.h"

namespace ublk {

absl::string_view CmdEncodingName(CmdEncoding encoding) {
  return encoding == CmdEncoding::kIoctl ? "ioctl" : "legacy";
}

absl::string_view CopyModeName(CopyMode mode) {
  switch (mode) {
    case CopyMode::kUserCopy:
      return "user_copy";
    case CopyMode::kGetData:
      return "get_data";
    case CopyMode::kZeroCopy:
      return "zero_copy";
  }
  return "?";
}

absl::string_view DeviceStateName(uint16_t state) {
  switch (state) {
    case UBLK_S_DEV_DEAD:
      return "DEAD";
    case UBLK_S_DEV_LIVE:
      return "LIVE";
    case UBLK_S_DEV_QUIESCED:
      return "QUIESCED";
    case UBLK_S_DEV_FAIL_IO:
      return "FAIL_IO";
    default:
      return "UNKNOWN";
  }
}

std::string BlockDevicePath(uint32_t dev_id) { return absl::StrCat("/dev/ublkb", dev_id); }
std::string CharDevicePath(uint32_t dev_id) { return absl::StrCat("/dev/ublkc", dev_id); }

absl::Status UblkErrnoToStatus(int err, absl::string_view context) {
  constexpr int kKernelEnotsupp = 524;  // ENOTSUPP, kernel-internal, leaks to CQEs
  std::string msg = absl::StrCat(
      context, ": ", err == kKernelEnotsupp ? "operation not supported" : ublk::Errno(err),
      " (errno ", err, ")");
  switch (err) {
    case ENOENT:
    case ENODEV:
      return absl::NotFoundError(msg);
    case EBUSY:
      return absl::UnavailableError(msg);
    case EEXIST:
      return absl::AlreadyExistsError(msg);
    case EINVAL:
      return absl::InvalidArgumentError(msg);
    case ENOMEM:
    case ENOSPC:
      return absl::ResourceExhaustedError(msg);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(msg);
    case EOPNOTSUPP:
    case ENOTTY:
    case kKernelEnotsupp:
      return absl::UnimplementedError(msg);
    default:
      return absl::ErrnoToStatus(err, msg);
  }
}

}  // namespace ublk
