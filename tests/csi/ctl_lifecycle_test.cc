// The built binaries together: ublk-csi with --backend=fake --mounter=fake
// driven by ublk-csi-ctl through a volume's life cycle, the way
// scripts/demo-lifecycle.sh does; checks exit codes and printed fields.
#include <signal.h>
#include <sys/stat.h>

#include <cstdio>
#include <regex>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"

namespace ublk_csi {
namespace {

using ::testing::HasSubstr;
using ublk_test::BuildDir;

class CtlLifecycleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    sock_ = dir_.path() + "/csi.sock";
    ASSERT_EQ(::mkdir((dir_.path() + "/data").c_str(), 0700), 0);
    plugin_ = std::make_unique<ublk_test::Child>(
        std::vector<std::string>{
            BuildDir() + "/csi/ublk-csi", "--node-id=n1", "--endpoint=unix://" + sock_,
            "--data-dir=" + dir_.path() + "/data", "--metrics-address=", "--backend=fake",
            "--mounter=fake", "--max-volumes=7"},
        dir_.path() + "/plugin.log");
    ASSERT_TRUE(ublk_test::WaitForPath(sock_)) << plugin_->Log();
  }
  void TearDown() override { EXPECT_EQ(plugin_->Stop(SIGTERM), 0) << plugin_->Log(); }

  ublk_test::RunResult Ctl(std::vector<std::string> args) {
    args.insert(args.begin(), {BuildDir() + "/csi/ublk-csi-ctl", "--endpoint=unix://" + sock_});
    return ublk_test::Run(args);
  }
  static std::string Field(const std::string& out, const std::string& name) {
    std::smatch m;
    if (std::regex_search(out, m, std::regex(name + ": \"([^\"]+)\""))) return m[1];
    return "";
  }

  ublk_test::TempDir dir_;
  std::string sock_;
  std::unique_ptr<ublk_test::Child> plugin_;
};

TEST_F(CtlLifecycleTest, CreateStagePublishStatusExpandSnapshotTearDown) {
  auto caps = Ctl({"identity", "caps"});
  EXPECT_THAT(caps.output, HasSubstr("CONTROLLER_SERVICE"));
  EXPECT_THAT(Ctl({"node", "info"}).output, HasSubstr("max_volumes_per_node: 7"));

  auto created = Ctl({"volume", "create", "pvc-1", "--size=64Mi", "--fs-type=xfs"});
  ASSERT_EQ(created.exit_code, 0) << created.output;
  EXPECT_THAT(created.output, HasSubstr("capacity_bytes: 67108864"));
  const std::string vol = Field(created.output, "volume_id");
  ASSERT_FALSE(vol.empty());

  const std::string staging = dir_.path() + "/staging", target = dir_.path() + "/pod/vol";
  ASSERT_EQ(
      Ctl({"node", "stage", vol, staging, "--fs-type=xfs", "--mount-flags=noatime"}).exit_code, 0);
  ASSERT_EQ(Ctl({"node", "publish", vol, staging, target, "--readonly"}).exit_code, 0);
  auto status = Ctl({"status"});
  ASSERT_EQ(status.exit_code, 0) << status.output;
  EXPECT_THAT(status.output, HasSubstr(vol));
  EXPECT_THAT(status.output, HasSubstr("state=live"));
  EXPECT_THAT(status.output, HasSubstr("staged=yes"));
  EXPECT_THAT(Ctl({"node", "stats", vol, target}).output, HasSubstr("INODES"));

  auto expanded = Ctl({"volume", "expand", vol, "128Mi"});
  EXPECT_THAT(expanded.output, HasSubstr("node_expansion_required: true"));
  EXPECT_THAT(Ctl({"node", "expand", vol, target, "128Mi"}).output,
              HasSubstr("capacity_bytes: 134217728"));

  auto snap = Ctl({"snapshot", "create", vol, "snap-1"});
  ASSERT_EQ(snap.exit_code, 0) << snap.output;
  const std::string snap_id = Field(snap.output, "snapshot_id");
  EXPECT_THAT(Ctl({"snapshot", "list"}).output, HasSubstr(snap_id));
  auto restored = Ctl({"volume", "create", "pvc-2", "--size=128Mi", "--from-snapshot=" + snap_id});
  ASSERT_EQ(restored.exit_code, 0) << restored.output;
  EXPECT_THAT(restored.output, HasSubstr(snap_id));

  auto busy = Ctl({"volume", "delete", vol});
  EXPECT_EQ(busy.exit_code, 1);
  EXPECT_THAT(busy.output, HasSubstr("FAILED_PRECONDITION"));
  EXPECT_EQ(Ctl({"node", "unpublish", vol, target}).exit_code, 0);
  EXPECT_EQ(Ctl({"node", "unstage", vol, staging}).exit_code, 0);
  EXPECT_EQ(Ctl({"snapshot", "delete", snap_id}).exit_code, 0);
  EXPECT_EQ(Ctl({"volume", "delete", vol}).exit_code, 0);
  EXPECT_EQ(Ctl({"volume", "delete", Field(restored.output, "volume_id")}).exit_code, 0);
  EXPECT_EQ(Ctl({"volume", "list"}).output, "{}\n");
}

TEST_F(CtlLifecycleTest, UsageAndErrorsAreClear) {
  auto bad_size = Ctl({"volume", "create", "x", "--size=lots"});
  EXPECT_EQ(bad_size.exit_code, 2);
  EXPECT_THAT(bad_size.output, HasSubstr("lots"));
  auto missing = Ctl({"node", "stage", "vol-1"});
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_THAT(missing.output, HasSubstr("usage: ublk-csi-ctl node stage"));
  auto unknown = Ctl({"node", "stage", "vol-nope", dir_.path() + "/s"});
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_THAT(unknown.output, HasSubstr("NOT_FOUND"));
  auto multi = Ctl({"volume", "create", "m", "--access-mode=MULTI_NODE_MULTI_WRITER"});
  EXPECT_EQ(multi.exit_code, 1);
  EXPECT_THAT(multi.output, HasSubstr("INVALID_ARGUMENT"));
  EXPECT_THAT(Ctl({"capacity"}).output, HasSubstr("available_capacity"));
}

// --secrets-file: a missing file and a line that is not key=value are
// usage errors that name the file and the line, and never print what the
// line holds (it may be a key).
TEST_F(CtlLifecycleTest, SecretsFileErrorsNameTheLineNotItsContent) {
  const std::string missing = dir_.path() + "/no-such.secrets";
  auto gone = Ctl({"volume", "create", "s1", "--secrets-file=" + missing});
  EXPECT_EQ(gone.exit_code, 2);
  EXPECT_THAT(gone.output, HasSubstr(missing));
  const std::string bad = dir_.path() + "/bad.secrets";
  FILE* f = std::fopen(bad.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fputs("# cephx\nuserID=admin\nuserKey AQDsecretKeyWithoutAnEqualsSign\n", f);
  std::fclose(f);
  for (std::vector<std::string> cmd :
       {std::vector<std::string>{"volume", "create", "s1"},
        std::vector<std::string>{"node", "stage", "vol-1", dir_.path() + "/s"}}) {
    cmd.push_back("--secrets-file=" + bad);
    auto r = Ctl(cmd);
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_THAT(r.output, HasSubstr("line 3: want key=value"));
    EXPECT_THAT(r.output, ::testing::Not(HasSubstr("AQDsecret")));
  }
  // Nothing was created by the refused call.
  EXPECT_THAT(Ctl({"volume", "list"}).output, ::testing::Not(HasSubstr("s1")));
}

TEST(CtlBackendFlagTest, DefaultUblkBackendSaysWhyItIsNotReady) {
  ublk_test::TempDir dir;
  const std::string sock = dir.path() + "/csi.sock";
  ublk_test::Child plugin(
      {BuildDir() + "/csi/ublk-csi", "--node-id=n1", "--endpoint=unix://" + sock,
       "--data-dir=" + dir.path(), "--metrics-address="},
      dir.path() + "/plugin.log");
  ASSERT_TRUE(ublk_test::WaitForPath(sock)) << plugin.Log();
  auto probe = ublk_test::Run(
      {BuildDir() + "/csi/ublk-csi-ctl", "--endpoint=unix://" + sock, "identity", "probe"});
  EXPECT_NE(probe.exit_code, 0);
  EXPECT_THAT(probe.output, ::testing::AnyOf(HasSubstr("ublk_drv"), HasSubstr("--backend=fake")));
  EXPECT_EQ(plugin.Stop(SIGTERM), 0);
  auto bad =
      ublk_test::Run({BuildDir() + "/csi/ublk-csi", "--node-id=n1", "--endpoint=unix://" + sock,
                      "--data-dir=" + dir.path(), "--metrics-address=", "--backend=nbd"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_THAT(bad.output, HasSubstr("--backend=nbd"));
}

}  // namespace
}  // namespace ublk_csi
