// What can be checked of the real kernel interface on a host without ublk:
// the missing-module error, errno mapping, and the ABI constants against the
// values of 6.12's ublk_cmd.h.
#include "ublk/kernel_real.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ublk {
namespace {

using ::testing::HasSubstr;

TEST(RealControlDeviceTest, MissingControlDeviceNamesTheModule) {
  auto dev = RealControlDevice::Open(CmdEncoding::kIoctl, "/nonexistent/ublk-control");
  EXPECT_EQ(dev.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(dev.status().message()), HasSubstr("ublk_drv"));
  EXPECT_THAT(std::string(dev.status().message()), HasSubstr("modprobe ublk_drv"));
}

TEST(RealControlDeviceTest, UblksMaxUnreadableIsNotFound) {
  EXPECT_EQ(ReadUblksMax("/nonexistent/ublks_max").status().code(), absl::StatusCode::kNotFound);
}

TEST(KernelTest, ErrnoMapping) {
  EXPECT_EQ(UblkErrnoToStatus(ENODEV, "x").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(UblkErrnoToStatus(ENOENT, "x").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(UblkErrnoToStatus(EBUSY, "x").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(UblkErrnoToStatus(EEXIST, "x").code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(UblkErrnoToStatus(EINVAL, "x").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(UblkErrnoToStatus(ENOMEM, "x").code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(UblkErrnoToStatus(ENOSPC, "x").code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(UblkErrnoToStatus(EOPNOTSUPP, "x").code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(UblkErrnoToStatus(524, "x").code(), absl::StatusCode::kUnimplemented);
  absl::Status s = UblkErrnoToStatus(ENODEV, "ublk GET_DEV_INFO device 3");
  EXPECT_THAT(std::string(s.message()), HasSubstr("device 3"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("errno 19"));
}

TEST(UapiTest, ConstantsMatchLinux612) {
  // Values printed from linux-headers-6.12 include/uapi/linux/ublk_cmd.h.
  EXPECT_EQ(UBLK_U_CMD_ADD_DEV, 0xc0207504u);
  EXPECT_EQ(UBLK_U_CMD_GET_DEV_INFO, 0x80207502u);
  EXPECT_EQ(UBLK_U_CMD_GET_FEATURES, 0x80207513u);
  EXPECT_EQ(UBLK_U_IO_FETCH_REQ, 0xc0107520u);
  EXPECT_EQ(UBLK_U_IO_COMMIT_AND_FETCH_REQ, 0xc0107521u);
  EXPECT_EQ(UBLK_U_IO_NEED_GET_DATA, 0xc0107522u);
  EXPECT_EQ(UBLK_U_CMD_UPDATE_SIZE, 0xc0207515u);
  EXPECT_EQ(UBLK_F_USER_COPY, 1ull << 7);
  EXPECT_EQ(UBLK_F_CMD_IOCTL_ENCODE, 1ull << 6);
  EXPECT_EQ(UBLK_F_AUTO_BUF_REG, 1ull << 11);
  EXPECT_EQ(sizeof(ublksrv_ctrl_cmd), 32u);
  EXPECT_EQ(sizeof(ublksrv_ctrl_dev_info), 64u);
  EXPECT_EQ(sizeof(ublksrv_io_desc), 24u);
  EXPECT_EQ(UserCopyOffset(0, 0), 0x80000000ull);
  EXPECT_EQ(UserCopyOffset(1, 2), 0x80000000ull + (1ull << 41) + (2ull << 25));
  EXPECT_EQ(BlockDevicePath(3), "/dev/ublkb3");
  EXPECT_EQ(CharDevicePath(3), "/dev/ublkc3");
}

}  // namespace
}  // namespace ublk
