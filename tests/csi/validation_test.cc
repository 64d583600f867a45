// Request validation in VolumeManager (issue 16, items 4 and 5): size
// arithmetic that cannot overflow (CreateVolume round-up, expansion, clones,
// ParseSize), CSI's name and map size limits, input echoed only escaped and
// truncated (error messages and log lines), and List responses that stay
// under a gRPC client's message limit.
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "csi/log_escape.h"
#include "gmock/gmock.h"
#include "tests/csi/manager_test_fixture.h"
#include "tests/testing/log_capture.h"

namespace ublk_csi {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

using Validation = ManagerTest;

// ---- item 4: sizes -------------------------------------------------------

TEST_F(Validation, CreateWithInt64MaxRequiredBytesIsOutOfRangeNotUndefined) {
  for (int64_t req : {INT64_MAX, INT64_MAX - 100, INT64_MAX - 4094}) {
    auto r = manager_->CreateVolume(CreateReq("huge", req));
    ASSERT_FALSE(r.ok()) << req;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kOutOfRange) << req << ": " << r.status();
    EXPECT_THAT(r.status().message(), HasSubstr("required_bytes"));
  }
  csi::v1::CreateVolumeRequest with_limit = CreateReq("huge", INT64_MAX - 100);
  with_limit.mutable_capacity_range()->set_limit_bytes(INT64_MAX);
  EXPECT_EQ(manager_->CreateVolume(with_limit).status().code(), absl::StatusCode::kOutOfRange);
  // The largest aligned size does not overflow: it is simply too big for
  // the pool, which says so.
  auto aligned = manager_->CreateVolume(CreateReq("huge", INT64_MAX / 4096 * 4096));
  EXPECT_EQ(aligned.status().code(), absl::StatusCode::kResourceExhausted) << aligned.status();
}

TEST_F(Validation, ExpandToNearInt64MaxFailsAndGrowsNothing) {
  auto id = Create("grow", 8 * kMiB);
  ASSERT_TRUE(id.ok()) << id.status();
  for (int64_t req : {INT64_MAX - 100, INT64_MAX}) {
    csi::v1::ControllerExpandVolumeRequest r;
    r.set_volume_id(*id);
    r.mutable_capacity_range()->set_required_bytes(req);
    auto resp = manager_->ControllerExpandVolume(r);
    ASSERT_FALSE(resp.ok()) << "reported capacity " << resp->capacity_bytes() << " for " << req;
    EXPECT_EQ(resp.status().code(), absl::StatusCode::kOutOfRange) << resp.status();
  }
  EXPECT_EQ(manager_->GetRecord(*id)->capacity_bytes(), 8 * kMiB);
  EXPECT_EQ(FileSize(*id), 8 * kMiB);
}

TEST_F(Validation, ExpandBeyondWhatTheFilesystemHoldsReportsNoSize) {
  // ext4 holds files up to 16 TiB: 2^61 bytes is refused with EFBIG. Where
  // the test's filesystem takes it (xfs, btrfs) there is nothing to test.
  const std::string probe = Path("probe");
  int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT, 0600);
  ASSERT_GE(fd, 0);
  const bool fits = ::ftruncate(fd, int64_t{1} << 61) == 0;
  ::close(fd);
  ::unlink(probe.c_str());
  if (fits) GTEST_SKIP() << "this filesystem holds a 2^61-byte file";
  free_bytes_ = int64_t{1} << 62;
  auto id = Create("grow", 8 * kMiB);
  ASSERT_TRUE(id.ok()) << id.status();
  csi::v1::ControllerExpandVolumeRequest r;
  r.set_volume_id(*id);
  r.mutable_capacity_range()->set_required_bytes(int64_t{1} << 61);
  auto resp = manager_->ControllerExpandVolume(r);
  ASSERT_FALSE(resp.ok());
  EXPECT_EQ(resp.status().code(), absl::StatusCode::kOutOfRange) << resp.status();
  EXPECT_EQ(manager_->GetRecord(*id)->capacity_bytes(), 8 * kMiB);
}

TEST_F(Validation, CloneAndRestoreWithOverflowingSizeAreOutOfRange) {
  auto src = Create("src", 8 * kMiB);
  ASSERT_TRUE(src.ok());
  csi::v1::CreateVolumeRequest clone = CreateReq("clone", INT64_MAX);
  clone.mutable_volume_content_source()->mutable_volume()->set_volume_id(*src);
  EXPECT_EQ(manager_->CreateVolume(clone).status().code(), absl::StatusCode::kOutOfRange);
  csi::v1::CreateSnapshotRequest sr;
  sr.set_name("snap");
  sr.set_source_volume_id(*src);
  auto snap = manager_->CreateSnapshot(sr);
  ASSERT_TRUE(snap.ok()) << snap.status();
  csi::v1::CreateVolumeRequest restore = CreateReq("restore", INT64_MAX - 1);
  restore.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(
      snap->snapshot().snapshot_id());
  EXPECT_EQ(manager_->CreateVolume(restore).status().code(), absl::StatusCode::kOutOfRange);
  // Smaller than the source: OUT_OF_RANGE as the spec asks.
  restore.mutable_capacity_range()->set_required_bytes(4 * kMiB);
  EXPECT_EQ(manager_->CreateVolume(restore).status().code(), absl::StatusCode::kOutOfRange);
}

TEST_F(Validation, CloneWithoutFsTypeTakesItsSourcesFilesystem) {
  auto src = Create("src", 8 * kMiB);  // ext4 by default, formatted as xfs
  ASSERT_TRUE(src.ok());
  ASSERT_TRUE(Stage(*src, Path("stage"), MountCap("xfs")).ok());
  csi::v1::CreateVolumeRequest clone = CreateReq("clone", 8 * kMiB);
  clone.mutable_volume_content_source()->mutable_volume()->set_volume_id(*src);
  auto made = manager_->CreateVolume(clone);
  ASSERT_TRUE(made.ok()) << made.status();
  EXPECT_EQ(manager_->GetRecord(made->volume().volume_id())->fs_type(), "xfs");
  auto again = manager_->CreateVolume(clone);  // idempotent repeat
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->volume().volume_id(), made->volume().volume_id());
  // Asked for ext4 explicitly: the source cannot give it.
  (*clone.mutable_parameters())["fsType"] = "ext4";
  clone.set_name("clone-ext4");
  EXPECT_EQ(manager_->CreateVolume(clone).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(Validation, DefaultSizeIsAlignedAndNeverZero) {
  options_.default_volume_bytes = 1000;
  Restart();
  csi::v1::CreateVolumeRequest r = CreateReq("dflt", 0);
  r.clear_capacity_range();
  auto v = manager_->CreateVolume(r);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->volume().capacity_bytes(), 4096);
  options_.default_volume_bytes = INT64_MAX;
  Restart();
  r.set_name("dflt-max");
  EXPECT_EQ(manager_->CreateVolume(r).status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(ParseSizeTest, OverflowIsAnErrorNotAWrap) {
  EXPECT_EQ(*ParseSize("9223372036854775807"), INT64_MAX);
  EXPECT_EQ(*ParseSize("8Ti"), int64_t{8} << 40);
  for (const char* bad : {"9223372036854775808", "8589934592Gi", "9223372036854776Ki", "-1", "",
                          "Gi", "1.5Gi", "99999999999999999999999"}) {
    auto r = ParseSize(bad);
    EXPECT_FALSE(r.ok()) << bad << " -> " << *r;
  }
  auto r = ParseSize(std::string(1 << 20, '9'));
  ASSERT_FALSE(r.ok());
  EXPECT_LT(r.status().message().size(), 400u);
}

// ---- item 5: names, maps, echoes -----------------------------------------

TEST_F(Validation, NamesFollowTheCsiLimits) {
  EXPECT_TRUE(Create(std::string(128, 'n'), 4 * kMiB).ok());  // csi-sanity's longest name
  EXPECT_TRUE(Create("tab\tand\nnewline are allowed", 4 * kMiB).ok());
  EXPECT_TRUE(Create("unicode \xe5\x90\x8d\xe5\x89\x8d", 4 * kMiB).ok());
  struct Bad {
    std::string name, says;
  } bad[] = {
      {std::string(129, 'n'), "129 bytes"},
      {std::string(1 << 20, 'n'), "1048576 bytes"},
      {std::string("nul\0byte", 8), "U+0000"},
      {"bell\x07", "U+0007"},
      {"esc\x1b[2J", "U+001B"},
      {"del\x7f", "U+007F"},
      {"c1 \xc2\x9b", "U+009B"},
      {"bad utf8 \xff", "not UTF-8"},
      {"cut \xe5\x90", "not UTF-8"},
      {"overlong \xc0\xaf", "not UTF-8"},
      {"surrogate \xed\xa0\x80", "not UTF-8"},
  };
  for (const Bad& b : bad) {
    auto r = manager_->CreateVolume(CreateReq(b.name, 4 * kMiB));
    ASSERT_FALSE(r.ok()) << EscapeForLog(b.name);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(r.status().message(), HasSubstr(b.says));
    EXPECT_LT(r.status().message().size(), 400u);
    for (char c : r.status().message())
      ASSERT_GE(static_cast<unsigned char>(c), 0x20) << r.status();
    csi::v1::CreateSnapshotRequest sr;
    sr.set_name(b.name);
    sr.set_source_volume_id("vol-x");
    EXPECT_EQ(manager_->CreateSnapshot(sr).status().code(), absl::StatusCode::kInvalidArgument);
  }
  // Nothing of them was stored.
  csi::v1::ListVolumesRequest all;
  EXPECT_EQ(manager_->ListVolumes(all)->entries_size(), 3);
}

TEST_F(Validation, NewlineInANameCannotForgeALogLine) {
  ublk_test::LogCapture logs;
  const std::string name = "pvc\nE1202 12:00:00.000000 1 fake.cc:1] forged";
  ASSERT_TRUE(Create(name, 4 * kMiB).ok());
  EXPECT_EQ(logs.Count(google::GLOG_INFO, {"created volume", "pvc\\nE1202"}), 1);
  EXPECT_EQ(logs.Count(google::GLOG_INFO, {"\n"}), 0);
  // Its repeat with another size echoes it escaped too.
  auto again = manager_->CreateVolume(CreateReq(name, 8 * kMiB));
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(again.status().message(), Not(HasSubstr("\n")));
  EXPECT_THAT(again.status().message(), HasSubstr("pvc\\nE1202"));
}

TEST_F(Validation, MapsAreLimitedTo4KiBAndValuesEchoedTruncated) {
  csi::v1::CreateVolumeRequest r = CreateReq("params", 4 * kMiB);
  (*r.mutable_parameters())["csi.storage.k8s.io/pvc/name"] = std::string(5000, 'p');
  auto big = manager_->CreateVolume(r);
  EXPECT_EQ(big.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(big.status().message(), HasSubstr("4096"));
  r.clear_parameters();
  (*r.mutable_parameters())["fsType"] = std::string(4000, 'f') + "\n";
  auto bad = manager_->CreateVolume(r);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_LT(bad.status().message().size(), 400u);
  EXPECT_THAT(bad.status().message(), Not(HasSubstr("\n")));
  csi::v1::GetCapacityRequest cap;
  (*cap.mutable_parameters())["csi.storage.k8s.io/x"] = std::string(5000, 'p');
  EXPECT_EQ(manager_->GetCapacity(cap).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(Validation, BadPageTokenIsEchoedTruncated) {
  csi::v1::ListVolumesRequest r;
  r.set_starting_token(std::string(1 << 20, 't') + "\n");
  auto resp = manager_->ListVolumes(r);
  EXPECT_EQ(resp.status().code(), absl::StatusCode::kAborted);
  EXPECT_LT(resp.status().message().size(), 400u);
  csi::v1::ListSnapshotsRequest s;
  s.set_starting_token(std::string(1 << 20, 't'));
  auto snaps = manager_->ListSnapshots(s);
  EXPECT_EQ(snaps.status().code(), absl::StatusCode::kAborted);
  EXPECT_LT(snaps.status().message().size(), 400u);
}

TEST_F(Validation, MalformedIdsAreEchoedOnOneLine) {
  for (const std::string& id :
       {std::string(".\nE1202 forged"), std::string("vol\nforged"), std::string(1 << 20, 'v')}) {
    csi::v1::ControllerExpandVolumeRequest r;
    r.set_volume_id(id);
    r.mutable_capacity_range()->set_required_bytes(kMiB);
    absl::Status s = manager_->ControllerExpandVolume(r).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.message(), Not(HasSubstr("\n")));
    EXPECT_LT(s.message().size(), 400u);
  }
}

TEST_F(Validation, ListVolumesStaysUnderAClientsMessageLimitWithLegacyHugeNames) {
  // Records written before names were limited: five 1 MiB names.
  for (int i = 0; i < 5; ++i) {
    records::VolumeRecord rec;
    rec.set_volume_id("vol-legacy" + std::to_string(i));
    rec.set_name(std::string(1 << 20, static_cast<char>('a' + i)));
    rec.set_state(records::VolumeRecord::READY);
    rec.set_capacity_bytes(4 * kMiB);
    rec.set_access_type(records::VolumeRecord::BLOCK);
    rec.set_backing_file(RecordStore::VolumeFileRel(rec.volume_id()));
    ASSERT_TRUE(store_->PutVolume(rec).ok());
  }
  Restart();
  std::set<std::string> seen;
  csi::v1::ListVolumesRequest r;  // max_entries 0: "no limit" from the CO
  for (int page = 0; page < 10; ++page) {
    auto resp = manager_->ListVolumes(r);
    ASSERT_TRUE(resp.ok()) << resp.status();
    EXPECT_LT(resp->ByteSizeLong(), size_t{4} << 20) << "page " << page;
    for (const auto& e : resp->entries()) seen.insert(e.volume().volume_id());
    if (resp->next_token().empty()) break;
    r.set_starting_token(resp->next_token());
  }
  EXPECT_EQ(seen.size(), 5u);
}

}  // namespace
}  // namespace ublk_csi
