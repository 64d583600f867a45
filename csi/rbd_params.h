// What selects and describes an RBD volume on the CSI side: the StorageClass
// parameters (backend: rbd, clusterID, monitors, pool, dataPool,
// imageFeatures), the cephx credentials from the CSI secrets (userID,
// userKey, the names ceph-csi uses), and the volume ID scheme.
//
// Secrets: RbdCredentials::key is the cephx key. It is never logged, never
// put in an error message, a record or a volume context; the parse errors
// below name the secret's key, never its value. Pure functions, no state.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/map.h"

namespace ublk_csi {

using ParamMap = google::protobuf::Map<std::string, std::string>;

// StorageClass parameter keys (also the volume_context keys handed to the
// node, which has no record of a volume another process created).
inline constexpr char kParamBackend[] = "backend";  // "file" (default) | "rbd"
inline constexpr char kParamClusterID[] = "clusterID";
inline constexpr char kParamMonitors[] = "monitors";
inline constexpr char kParamPool[] = "pool";
inline constexpr char kParamDataPool[] = "dataPool";
inline constexpr char kParamImageFeatures[] = "imageFeatures";
inline constexpr char kContextImageName[] = "imageName";
// Secret keys (controller create/delete/expand/snapshot secrets and the
// node-stage secrets), as ceph-csi names them.
inline constexpr char kSecretUserID[] = "userID";
inline constexpr char kSecretUserKey[] = "userKey";

// RBD feature bits (librbd's include/rbd/features.h; repeated here so the
// parser, the fake and the tests need no librbd).
inline constexpr uint64_t kRbdLayering = 1ULL << 0;
inline constexpr uint64_t kRbdExclusiveLock = 1ULL << 2;
inline constexpr uint64_t kRbdObjectMap = 1ULL << 3;
inline constexpr uint64_t kRbdFastDiff = 1ULL << 4;
inline constexpr uint64_t kRbdDeepFlatten = 1ULL << 5;
// librbd 16's default set; what a StorageClass without imageFeatures gets.
inline constexpr uint64_t kRbdDefaultFeatures =
    kRbdLayering | kRbdExclusiveLock | kRbdObjectMap | kRbdFastDiff | kRbdDeepFlatten;

// Which Ceph cluster and which pool: everything needed to reach an image
// except the credentials. Persisted in records (no secret in here).
struct RbdLocation {
  std::string cluster_id;  // the StorageClass's name for the cluster
  std::string monitors;    // mon_host, e.g. "10.0.0.1:6789,10.0.0.2:6789"
  std::string pool;
  std::string data_pool;  // "" = data in `pool`
  uint64_t features = kRbdDefaultFeatures;
};

struct RbdCredentials {
  std::string user;  // cephx user without "client.", e.g. "kubernetes"
  std::string key;   // SECRET: the cephx key (base64)
};

// True when parameters (or a volume context) select the RBD backend.
// INVALID_ARGUMENT for a backend value other than "file"/"rbd".
absl::StatusOr<bool> SelectsRbd(const ParamMap& params, absl::string_view field);

// Validates the RBD StorageClass parameters. INVALID_ARGUMENT naming the
// parameter ("parameters.pool ...") for a missing or malformed one, an
// unknown imageFeatures name, or a feature set librbd refuses (object-map
// needs exclusive-lock, fast-diff needs object-map). `also_known` lists the
// other keys the caller accepts (fsType, ...); anything else is unknown.
absl::StatusOr<RbdLocation> ParseRbdParams(const ParamMap& params, absl::string_view field,
                                           std::initializer_list<absl::string_view> also_known);
// "layering,exclusive-lock,..." -> bits; INVALID_ARGUMENT naming `field`.
absl::StatusOr<uint64_t> ParseImageFeatures(absl::string_view text, absl::string_view field);
std::string ImageFeaturesString(uint64_t features);

// userID + userKey from the CSI secrets. INVALID_ARGUMENT naming the missing
// or malformed KEY ("secrets.userKey is required"); the value is never
// quoted. `field` names the request field ("secrets").
absl::StatusOr<RbdCredentials> ParseRbdSecrets(const ParamMap& secrets, absl::string_view field);

// Volume IDs of RBD volumes: "rbd.<clusterID>.<pool>.<image>", where the
// image name is derived from the CSI volume name (ImageNameFor), so a repeat
// of CreateVolume finds the image whatever became of the records and the
// node can stage from the ID and context alone. At most 128 bytes.
std::string ImageNameFor(absl::string_view volume_name);  // "csi-vol-<16 hex>"
absl::StatusOr<std::string> RbdVolumeId(const RbdLocation& loc, absl::string_view image);
struct ParsedRbdVolumeId {
  std::string cluster_id, pool, image;
};
// nullopt when `volume_id` is not an RBD volume ID.
std::optional<ParsedRbdVolumeId> ParseRbdVolumeId(absl::string_view volume_id);
// --rbd-clusters-file: one cluster per line, "clusterID monitors" (e.g.
// "ceph-a 10.0.0.1:6789,10.0.0.2:6789"), '#' comments, blank lines. Lets a
// controller without a volume's record (a replaced pod, an emptyDir data
// dir) still reach its cluster to delete its image. InvalidArgument naming
// `source` and the line for a malformed one or a clusterID given twice.
absl::StatusOr<std::map<std::string, std::string>> ParseRbdClusters(absl::string_view text,
                                                                    absl::string_view source);
// A snapshot's RBD snap name, derived from the CSI snapshot name.
std::string SnapNameFor(absl::string_view snapshot_name);  // "csi-snap-<16 hex>"
// Snapshot IDs of RBD snapshots: "<volume ID>.<snap>" (e.g.
// "rbd.ceph-a.kube.csi-vol-<16 hex>.csi-snap-<16 hex>"), so that a
// controller without the snapshot's record (a replaced pod) can still
// restore and delete it: the ID names cluster, pool, image and snap. nullopt
// when the ID would exceed 128 bytes (the caller falls back to a
// record-only ID).
std::optional<std::string> RbdSnapshotId(absl::string_view volume_id, absl::string_view snap);
struct ParsedRbdSnapshotId {
  std::string volume_id;  // the source volume's ID
  ParsedRbdVolumeId volume;
  std::string snap;
};
// nullopt when `snapshot_id` is not such an ID.
std::optional<ParsedRbdSnapshotId> ParseRbdSnapshotId(absl::string_view snapshot_id);

}  // namespace ublk_csi
