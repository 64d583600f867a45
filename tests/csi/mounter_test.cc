// RealMounter pieces that need no mount and no device: mountinfo parsing,
// running util programs with captured output, and mkfs/blkid on a regular
// temp file (no block device, nothing mounted). FakeMounter's table rules.
#include "csi/mounter.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <iterator>

#include "absl/time/clock.h"
#include "csi/fake_mounter.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"

namespace ublk_csi {
namespace {

using ::testing::HasSubstr;

TEST(ParseMountInfoTest, FieldsEscapesAndOptionalTags) {
  const std::string text =
      "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
      "95 22 259:3 / /var/lib/kubelet/plugins/x/globalmount rw,noatime shared:50 master:3 - xfs "
      "/dev/ublkb3 rw,attr2\n"
      "96 22 259:3 / /pods/with\\040space ro,relatime - xfs /dev/ublkb3 rw\n"
      "garbage line\n";
  auto m = ParseMountInfo(text);
  ASSERT_EQ(m.size(), 3u);
  EXPECT_EQ(m[0].target, "/");
  EXPECT_EQ(m[0].fstype, "ext4");
  EXPECT_EQ(m[1].source, "/dev/ublkb3");
  EXPECT_EQ(m[1].fstype, "xfs");
  EXPECT_FALSE(m[1].readonly);
  EXPECT_EQ(m[2].target, "/pods/with space");
  EXPECT_TRUE(m[2].readonly);
}

TEST(RunCommandTest, CapturesOutputAndExitCode) {
  auto ok = RunCommand({"sh", "-c", "echo out; echo err >&2; exit 3"});
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->exit_code, 3);
  EXPECT_THAT(ok->output, HasSubstr("out"));
  EXPECT_THAT(ok->output, HasSubstr("err"));
  auto missing = RunCommand({"no-such-program-ublk-csi"});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("no-such-program-ublk-csi"));
}

// A tool that hangs (mkfs on a device that stopped answering) is killed
// at the timeout, with its process group, and the caller gets a clear
// DEADLINE_EXCEEDED instead of a CSI call blocked forever.
TEST(RunCommandTest, ToolRunningPastTheTimeoutIsKilledWithAClearError) {
  const absl::Time t0 = absl::Now();
  auto r = RunCommand({"sh", "-c", "sleep 30 & sleep 30"}, absl::Milliseconds(300));
  const absl::Duration took = absl::Now() - t0;
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("`sh -c sleep 30 & sleep 30`"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("did not finish within 300ms; killed"));
  EXPECT_LT(took, absl::Seconds(10));  // not the 30 s of the tool (nor of its child)
  // Within the timeout nothing changes.
  auto quick = RunCommand({"sh", "-c", "echo hi"}, absl::Seconds(30));
  ASSERT_TRUE(quick.ok()) << quick.status();
  EXPECT_EQ(quick->exit_code, 0);
  EXPECT_THAT(quick->output, HasSubstr("hi"));
}

TEST(RealMounterTest, ProbeFindsNothingThenWhatMkfsMade) {
  if (::access("/usr/sbin/mkfs.ext4", X_OK) != 0 && ::access("/sbin/mkfs.ext4", X_OK) != 0) {
    GTEST_SKIP() << "mkfs.ext4 not installed";
  }
  ublk_test::TempDir dir;
  const std::string img = dir.path() + "/disk.img";
  int fd = ::open(img.c_str(), O_CREAT | O_WRONLY, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, 16 << 20), 0);
  ::close(fd);
  RealMounter m;
  auto none = m.ProbeFilesystem(img);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(*none, "");
  ASSERT_TRUE(m.MakeFilesystem(img, "ext4").ok());
  auto found = m.ProbeFilesystem(img);
  ASSERT_TRUE(found.ok());
  EXPECT_EQ(*found, "ext4");
  auto bad = m.MakeFilesystem(img, "vfat");
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  auto err = m.MakeFilesystem(dir.path() + "/missing.img", "ext4");
  EXPECT_FALSE(err.ok());
  EXPECT_THAT(std::string(err.message()), HasSubstr("mkfs.ext4"));
}

TEST(RealMounterTest, APartitionTableIsNotAnEmptyDevice) {
  if (::access("/usr/sbin/blkid", X_OK) != 0 && ::access("/sbin/blkid", X_OK) != 0) {
    GTEST_SKIP() << "blkid not installed";
  }
  ublk_test::TempDir dir;
  const std::string img = dir.path() + "/pt.img";
  int fd = ::open(img.c_str(), O_CREAT | O_WRONLY, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, 16 << 20), 0);
  // A DOS partition table: one Linux partition at LBA 2048, 2048 sectors.
  unsigned char mbr[512] = {};
  const unsigned char entry[16] = {0, 0, 0, 0, 0x83, 0, 0, 0, 0x00, 0x08, 0, 0, 0x00, 0x08, 0, 0};
  std::copy(std::begin(entry), std::end(entry), mbr + 446);
  mbr[510] = 0x55;
  mbr[511] = 0xAA;
  ASSERT_EQ(::pwrite(fd, mbr, sizeof(mbr), 0), 512);
  ::close(fd);
  auto found = RealMounter().ProbeFilesystem(img);
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(*found, "partition-table-dos") << "mkfs must never run over it";
}

TEST(RealMounterTest, StatfsAndMountTable) {
  RealMounter m;
  auto st = m.Statfs("/");
  ASSERT_TRUE(st.ok());
  EXPECT_GT(st->total_bytes, 0);
  EXPECT_GE(st->total_bytes, st->available_bytes);
  auto root = m.GetMountInfo("/");
  ASSERT_TRUE(root.ok());
  EXPECT_TRUE(root->has_value());
  ublk_test::TempDir dir;
  EXPECT_FALSE(*m.IsMountPoint(dir.path()));
  EXPECT_FALSE(m.Unmount(dir.path()).ok());
}

TEST(FakeMounterTest, MountNeedsFilesystemAndStacks) {
  ublk_test::TempDir dir;
  const std::string dev = dir.path() + "/dev";
  int fd = ::open(dev.c_str(), O_CREAT | O_WRONLY, 0600);
  ASSERT_GE(fd, 0);
  ::close(fd);
  FakeMounter m;
  EXPECT_FALSE(m.Mount(dev, dir.path(), "ext4", {}).ok()) << "no filesystem yet";
  ASSERT_TRUE(m.MakeFilesystem(dev, "ext4").ok());
  EXPECT_FALSE(m.Mount(dev, dir.path(), "xfs", {}).ok()) << "wrong type";
  ASSERT_TRUE(m.Mount(dev, dir.path(), "ext4", {}).ok());
  ASSERT_TRUE(m.Mount(dev, dir.path(), "ext4", {}).ok());
  ASSERT_TRUE(m.Unmount(dir.path()).ok());
  EXPECT_TRUE(*m.IsMountPoint(dir.path())) << "the lower mount remains";
  ASSERT_TRUE(m.Unmount(dir.path()).ok());
  EXPECT_FALSE(m.Unmount(dir.path()).ok());
  EXPECT_FALSE(m.Mount(dev, dir.path() + "/missing", "ext4", {}).ok());
}

}  // namespace
}  // namespace ublk_csi
