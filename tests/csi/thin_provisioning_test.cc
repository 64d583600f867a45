// Thin provisioning: the pool is the data dir's free space plus what its
// files already use; volumes are admitted while the sum of their sizes stays
// within capacity x overcommit ratio (flag, or the StorageClass parameter
// overcommitRatio). GetCapacity reports the same room; a refusal is a
// RESOURCE_EXHAUSTED naming requested, provisioned, capacity and ratio, one
// WARNING per transition and a counter; ublk_csi_pool_bytes shows
// provisioned vs used.
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "tests/csi/manager_test_fixture.h"
#include "tests/testing/log_capture.h"

namespace ublk_csi {
namespace {

using ::testing::HasSubstr;

class Thin : public ManagerTest {
 protected:
  int64_t Available(const std::string& ratio_param = "") {
    csi::v1::GetCapacityRequest r;
    if (!ratio_param.empty()) (*r.mutable_parameters())[kParamOvercommitRatio] = ratio_param;
    auto resp = manager_->GetCapacity(r);
    EXPECT_TRUE(resp.ok()) << resp.status();
    if (resp.ok()) {
      EXPECT_EQ(resp->maximum_volume_size().value(), resp->available_capacity());
    }
    return resp.ok() ? resp->available_capacity() : -1;
  }

  double Metric(const std::string& name, const std::string& kind = "") {
    for (const auto& fam : registry_->Collect()) {
      if (fam.name != name) continue;
      for (const auto& m : fam.metric) {
        bool match = kind.empty();
        for (const auto& l : m.label) match |= l.name == "kind" && l.value == kind;
        if (!match) continue;
        return fam.type == prometheus::MetricType::Counter ? m.counter.value : m.gauge.value;
      }
    }
    return -1;
  }

  void WriteData(const std::string& volume_id, size_t bytes) {
    auto rec = manager_->GetRecord(volume_id);
    ASSERT_TRUE(rec.ok());
    int fd = ::open(store_->Abs(rec->backing_file()).c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    std::string data(bytes, 'd');
    ASSERT_EQ(::pwrite(fd, data.data(), data.size(), 0), static_cast<ssize_t>(data.size()));
    ::fsync(fd);
    ::close(fd);
  }
};

TEST_F(Thin, RatioOneNeverPromisesMoreThanTheDiskHolds) {
  free_bytes_ = 100 * kMiB;
  ASSERT_TRUE(Create("a", 60 * kMiB).ok());
  // Sparse: free space did not shrink, but 60 of 100 MiB are promised.
  auto b = Create("b", 60 * kMiB);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
  for (const char* part :
       {"'b'", "62914560 bytes (60.0 MiB) requested",
        "62914560 bytes (60.0 MiB) already provisioned", "capacity 104857600 bytes",
        "overcommit ratio 1 ", "--overcommit-ratio", "overcommitRatio"}) {
    EXPECT_THAT(b.status().message(), HasSubstr(part));
  }
  EXPECT_TRUE(Create("c", 40 * kMiB).ok());  // exactly full
  EXPECT_EQ(Available(), 0);
}

TEST_F(Thin, OvercommitRatioFlagAdmitsThatManyTimesTheCapacity) {
  options_.overcommit_ratio = 4;
  Restart();
  free_bytes_ = 100 * kMiB;
  EXPECT_EQ(Available(), 400 * kMiB);
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(Create("v" + std::to_string(i), 60 * kMiB).ok()) << i;
  EXPECT_EQ(Available(), 40 * kMiB);
  EXPECT_EQ(Create("v6", 60 * kMiB).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(Create("v7", 40 * kMiB).ok());
}

TEST_F(Thin, StorageClassParameterOverridesTheFlagAndIsValidated) {
  free_bytes_ = 100 * kMiB;
  auto req = CreateReq("thin", 500 * kMiB);
  (*req.mutable_parameters())[kParamOvercommitRatio] = "10";
  auto thin = manager_->CreateVolume(req);
  ASSERT_TRUE(thin.ok()) << thin.status();
  EXPECT_EQ(Available("10"), 500 * kMiB);
  EXPECT_EQ(Available(), 0);  // flag's ratio 1: 500 MiB promised on 100 MiB
  EXPECT_EQ(Create("thick", 4096).status().code(), absl::StatusCode::kResourceExhausted);
  for (const char* bad : {"0", "-1", "abc", "nan", "inf", "1e9", ""}) {
    auto r = CreateReq(std::string("bad-") + bad, 4 * kMiB);
    (*r.mutable_parameters())[kParamOvercommitRatio] = bad;
    auto s = manager_->CreateVolume(r);
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    csi::v1::GetCapacityRequest g;
    (*g.mutable_parameters())[kParamOvercommitRatio] = bad;
    EXPECT_EQ(manager_->GetCapacity(g).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  // Its expansion uses the class's ratio, recorded with the volume.
  csi::v1::ControllerExpandVolumeRequest e;
  e.set_volume_id(thin->volume().volume_id());
  e.mutable_capacity_range()->set_required_bytes(900 * kMiB);
  EXPECT_TRUE(manager_->ControllerExpandVolume(e).ok());
  e.mutable_capacity_range()->set_required_bytes(1100 * kMiB);
  EXPECT_EQ(manager_->ControllerExpandVolume(e).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST_F(Thin, CapacityCountsSpaceAlreadyUsedByVolumes) {
  free_bytes_ = 100 * kMiB;
  auto a = Create("a", 50 * kMiB);
  ASSERT_TRUE(a.ok());
  WriteData(*a, 8 * kMiB);  // the seam's free space does not move; used does
  EXPECT_GE(Available(), 58 * kMiB);
  manager_->RefreshPoolMetrics();
  EXPECT_EQ(Metric("ublk_csi_pool_bytes", "provisioned"), 50.0 * kMiB);
  EXPECT_GE(Metric("ublk_csi_pool_bytes", "used"), 8.0 * kMiB);
  EXPECT_GE(Metric("ublk_csi_pool_bytes", "capacity"), 108.0 * kMiB);
  EXPECT_EQ(Metric("ublk_csi_pool_overcommit_ratio"), 1.0);
}

TEST_F(Thin, ExpansionIsAdmittedLikeCreation) {
  free_bytes_ = 100 * kMiB;
  auto a = Create("a", 50 * kMiB);
  ASSERT_TRUE(a.ok());
  csi::v1::ControllerExpandVolumeRequest e;
  e.set_volume_id(*a);
  e.mutable_capacity_range()->set_required_bytes(120 * kMiB);
  auto r = manager_->ControllerExpandVolume(e);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(r.status().message(), HasSubstr("73400320 bytes (70.0 MiB) requested"));
  EXPECT_EQ(FileSize(*a), 50 * kMiB);
  EXPECT_EQ(manager_->GetRecord(*a)->capacity_bytes(), 50 * kMiB);
  e.mutable_capacity_range()->set_required_bytes(100 * kMiB);
  auto ok = manager_->ControllerExpandVolume(e);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->capacity_bytes(), 100 * kMiB);
  EXPECT_EQ(FileSize(*a), 100 * kMiB);
}

TEST_F(Thin, ExhaustionLogsOncePerTransitionAndCounts) {
  ublk_test::LogCapture logs;
  free_bytes_ = 100 * kMiB;
  auto a = Create("a", 90 * kMiB);
  ASSERT_TRUE(a.ok());
  EXPECT_FALSE(Create("b", 20 * kMiB).ok());
  EXPECT_FALSE(Create("c", 20 * kMiB).ok());
  EXPECT_EQ(Metric("ublk_csi_pool_exhausted_total"), 2);
  EXPECT_EQ(logs.Count(google::GLOG_WARNING, {"thin pool exhausted"}), 1);
  free_bytes_ = 200 * kMiB;  // the operator grew the disk
  EXPECT_TRUE(Create("b", 20 * kMiB).ok());
  EXPECT_EQ(logs.Count(google::GLOG_INFO, {"thin pool has room again"}), 1);
  EXPECT_TRUE(Create("d", 20 * kMiB).ok());
  EXPECT_EQ(logs.Count(google::GLOG_INFO, {"thin pool has room again"}), 1);
}

TEST_F(Thin, ConcurrentCreatesCannotShareTheLastRoom) {
  free_bytes_ = 100 * kMiB;
  std::atomic<int> ok{0}, exhausted{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      auto r = Create("c" + std::to_string(i), 30 * kMiB);
      if (r.ok()) ++ok;
      if (r.status().code() == absl::StatusCode::kResourceExhausted) ++exhausted;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 3);
  EXPECT_EQ(exhausted.load(), 5);
}

TEST_F(Thin, CsiSanitySizedVolumesFitASmallDataDirWithARatio) {
  // csi-sanity asks for 10 GiB volumes; the e2e data dir has ~1 GiB.
  options_.overcommit_ratio = 100;
  Restart();
  free_bytes_ = 1 * kGiB;
  for (int i = 0; i < 3; ++i) {
    auto v = Create("sanity-" + std::to_string(i), 10 * kGiB);
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_EQ(FileSize(*v), 10 * kGiB);  // sparse
  }
}

TEST_F(Thin, LoadRefusesANonsenseRatio) {
  for (double bad : {0.0, -1.0, 1e9, std::nan("")}) {
    VolumeManagerOptions opts;
    opts.node_id = "n";
    opts.overcommit_ratio = bad;
    VolumeManager m(opts, store_.get(), backend_.get(), mounter_.get());
    absl::Status s = m.Load();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(s.message(), HasSubstr("--overcommit-ratio"));
  }
}

}  // namespace
}  // namespace ublk_csi
