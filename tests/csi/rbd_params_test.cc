#include "csi/rbd_params.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ublk_csi {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

ParamMap Good() {
  ParamMap p;
  p["backend"] = "rbd";
  p["clusterID"] = "ceph-a";
  p["monitors"] = "10.0.0.1:6789,10.0.0.2:6789";
  p["pool"] = "kube";
  return p;
}

TEST(RbdParamsTest, SelectsRbdOnlyForBackendRbd) {
  ParamMap p;
  EXPECT_FALSE(*SelectsRbd(p, "parameters"));
  p["backend"] = "file";
  EXPECT_FALSE(*SelectsRbd(p, "parameters"));
  p["backend"] = "rbd";
  EXPECT_TRUE(*SelectsRbd(p, "parameters"));
  p["backend"] = "nbd";
  absl::StatusOr<bool> bad = SelectsRbd(p, "parameters");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("parameters.backend 'nbd'"));
}

TEST(RbdParamsTest, ParsesAGoodClassWithDefaults) {
  absl::StatusOr<RbdLocation> loc = ParseRbdParams(Good(), "parameters", {"fsType"});
  ASSERT_TRUE(loc.ok()) << loc.status();
  EXPECT_EQ(loc->cluster_id, "ceph-a");
  EXPECT_EQ(loc->monitors, "10.0.0.1:6789,10.0.0.2:6789");
  EXPECT_EQ(loc->pool, "kube");
  EXPECT_EQ(loc->data_pool, "");
  EXPECT_EQ(loc->features, kRbdDefaultFeatures);
}

TEST(RbdParamsTest, EachBadParameterIsNamed) {
  struct Case {
    const char* key;
    const char* value;  // nullptr: remove the key
    const char* named;
  };
  const Case cases[] = {
      {"clusterID", nullptr, "parameters.clusterID is required"},
      {"clusterID", "a.b", "parameters.clusterID 'a.b'"},
      {"monitors", nullptr, "parameters.monitors is required"},
      {"monitors", "10.0.0.1;rm -rf", "parameters.monitors"},
      {"pool", nullptr, "parameters.pool is required"},
      {"pool", ".hidden", "parameters.pool '.hidden'"},
      {"pool", "a/b", "parameters.pool 'a/b'"},
      {"dataPool", "", "parameters.dataPool is required"},
      {"dataPool", "ec pool", "parameters.dataPool 'ec pool'"},
      {"imageFeatures", "layering,journaling", "parameters.imageFeatures: 'journaling'"},
      {"imageFeatures", "layering,object-map", "object-map needs exclusive-lock"},
      {"imageFeatures", "layering,exclusive-lock,fast-diff", "fast-diff needs object-map"},
      {"imageFeatures", "exclusive-lock", "layering is required"},
      {"imageFeatures", " , ", "parameters.imageFeatures is empty"},
      {"bogus", "1", "unknown key 'bogus'"},
  };
  for (const Case& c : cases) {
    ParamMap p = Good();
    if (c.value == nullptr) {
      p.erase(c.key);
    } else {
      p[c.key] = c.value;
    }
    absl::StatusOr<RbdLocation> loc = ParseRbdParams(p, "parameters", {"fsType"});
    EXPECT_EQ(loc.status().code(), absl::StatusCode::kInvalidArgument) << c.key;
    EXPECT_THAT(loc.status().message(), HasSubstr(c.named)) << c.key;
  }
}

TEST(RbdParamsTest, FeaturesAndDataPool) {
  ParamMap p = Good();
  p["imageFeatures"] = "layering, exclusive-lock,object-map,fast-diff";
  p["dataPool"] = "kube-ec";
  p["fsType"] = "xfs";
  p["csi.storage.k8s.io/pvc/name"] = "x";
  absl::StatusOr<RbdLocation> loc = ParseRbdParams(p, "parameters", {"fsType"});
  ASSERT_TRUE(loc.ok()) << loc.status();
  EXPECT_EQ(loc->features, kRbdLayering | kRbdExclusiveLock | kRbdObjectMap | kRbdFastDiff);
  EXPECT_EQ(loc->data_pool, "kube-ec");
  EXPECT_EQ(ImageFeaturesString(loc->features), "layering,exclusive-lock,object-map,fast-diff");
}

TEST(RbdParamsTest, TheProvisionerIdentityInAVolumeContextIsNotAnUnknownKey) {
  // What kubelet passes to NodeStage: the PV's volumeAttributes, to which
  // csi-provisioner adds its identity (found by k8s scenario 110-rbd-pvc).
  ParamMap ctx = Good();
  ctx["imageName"] = "csi-vol-0123456789abcdef";
  ctx["storage.kubernetes.io/csiProvisionerIdentity"] = "1764892612345-8081-rbd.ublk.csi.io";
  absl::StatusOr<RbdLocation> loc = ParseRbdParams(ctx, "volume_context", {"fsType"});
  EXPECT_TRUE(loc.ok()) << loc.status();
  ctx["storage.kubernetes.ioX"] = "1";
  EXPECT_THAT(ParseRbdParams(ctx, "volume_context", {}).status().message(),
              HasSubstr("unknown key 'storage.kubernetes.ioX'"));
}

TEST(RbdParamsTest, SecretsAreRequiredAndNeverQuoted) {
  ParamMap s;
  EXPECT_THAT(ParseRbdSecrets(s, "secrets").status().message(),
              HasSubstr("secrets.userID is required"));
  s["userID"] = "kubernetes";
  EXPECT_THAT(ParseRbdSecrets(s, "secrets").status().message(),
              HasSubstr("secrets.userKey is required"));
  s["userKey"] = "AQD-not base64 SECRETVALUE";
  absl::StatusOr<RbdCredentials> bad = ParseRbdSecrets(s, "secrets");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("secrets.userKey"));
  EXPECT_THAT(bad.status().message(), Not(HasSubstr("SECRETVALUE")));
  s["userKey"] = "AQBGd2JlAAAAABAAtZ1p0Pz5Q4R7uU2lUzWJwA==";
  s["userID"] = "client.kubernetes";
  absl::StatusOr<RbdCredentials> c = ParseRbdSecrets(s, "secrets");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->user, "kubernetes");
  EXPECT_EQ(c->key, "AQBGd2JlAAAAABAAtZ1p0Pz5Q4R7uU2lUzWJwA==");
}

TEST(RbdParamsTest, ClustersFileLinesAndErrorsNameTheLine) {
  auto ok = ParseRbdClusters(
      "# clusters\nceph-a 10.0.0.1:6789,10.0.0.2:6789\n\n  ceph-b\t10.1.0.1\n", "f");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->size(), 2u);
  EXPECT_EQ(ok->at("ceph-a"), "10.0.0.1:6789,10.0.0.2:6789");
  EXPECT_EQ(ok->at("ceph-b"), "10.1.0.1");
  struct Bad {
    const char* text;
    const char* want;
  };
  for (const Bad& b :
       {Bad{"ceph-a\n", "f line 1: want \"clusterID monitors\""},
        Bad{"ceph-a 1.2.3.4 extra\n", "f line 1: want"},
        Bad{"# x\nce.ph 1.2.3.4\n", "f line 2: clusterID"},
        Bad{"ceph-a 1.2.3.4\nceph-a 5.6.7.8\n", "f line 2: clusterID 'ceph-a' given twice"}}) {
    auto r = ParseRbdClusters(b.text, "f");
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << b.text;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(b.want)) << b.text;
  }
}

TEST(RbdParamsTest, VolumeIdRoundTripsAndIsDerivedFromTheName) {
  RbdLocation loc;
  loc.cluster_id = "ceph-a";
  loc.pool = "kube.ssd";
  const std::string image = ImageNameFor("pvc-1234");
  EXPECT_EQ(image, ImageNameFor("pvc-1234"));
  EXPECT_NE(image, ImageNameFor("pvc-1235"));
  absl::StatusOr<std::string> id = RbdVolumeId(loc, image);
  ASSERT_TRUE(id.ok()) << id.status();
  std::optional<ParsedRbdVolumeId> back = ParseRbdVolumeId(*id);
  ASSERT_TRUE(back.has_value()) << *id;
  EXPECT_EQ(back->cluster_id, "ceph-a");
  EXPECT_EQ(back->pool, "kube.ssd");
  EXPECT_EQ(back->image, image);
  EXPECT_FALSE(ParseRbdVolumeId("vol-0123456789abcdef").has_value());
  EXPECT_FALSE(ParseRbdVolumeId("rbd.a.b").has_value());
  loc.pool = std::string(120, 'p');
  EXPECT_EQ(RbdVolumeId(loc, image).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(RbdParamsTest, SnapshotIdNamesItsImageAndSnap) {
  const std::string vol = "rbd.ceph-a.kube.ssd." + ImageNameFor("pvc-1");
  const std::string snap = SnapNameFor("snapshot-1");
  std::optional<std::string> id = RbdSnapshotId(vol, snap);
  ASSERT_TRUE(id.has_value());
  EXPECT_EQ(*id, vol + "." + snap);
  std::optional<ParsedRbdSnapshotId> back = ParseRbdSnapshotId(*id);
  ASSERT_TRUE(back.has_value()) << *id;
  EXPECT_EQ(back->volume_id, vol);
  EXPECT_EQ(back->volume.cluster_id, "ceph-a");
  EXPECT_EQ(back->volume.pool, "kube.ssd");
  EXPECT_EQ(back->volume.image, ImageNameFor("pvc-1"));
  EXPECT_EQ(back->snap, snap);
  // A snapshot ID is no volume ID, and a volume ID no snapshot ID.
  EXPECT_FALSE(ParseRbdVolumeId(*id).has_value());
  EXPECT_FALSE(ParseRbdSnapshotId(vol).has_value());
  for (const char* bad : {"snap-0123456789abcdef", "rbd.a.b.csi-snap-0123456789abcdef",
                          "rbd.a.b.csi-vol-0123456789abcdef.csi-snap-0123",
                          "rbd.a.b.csi-vol-0123456789abcdef.csi-snap-0123456789abcdeg",
                          "rbd.a.b.csi-vol-0123456789abcdef.snap-0123456789abcdef", ""}) {
    EXPECT_FALSE(ParseRbdSnapshotId(bad).has_value()) << bad;
  }
  // Past 128 bytes there is no such ID (the caller keeps a record-only one).
  EXPECT_FALSE(RbdSnapshotId("rbd.c." + std::string(80, 'p') + "." + ImageNameFor("x"), snap));
}

}  // namespace
}  // namespace ublk_csi
