#include "csi/rbd_params.h"

#include <algorithm>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "csi/log_escape.h"
#include "ublk/status_macros.h"

namespace ublk_csi {

namespace {

constexpr char kReservedPrefix[] = "csi.storage.k8s.io/";
// external-provisioner adds storage.kubernetes.io/csiProvisionerIdentity to
// every PV's volumeAttributes, which kubelet passes on as volume_context.
constexpr char kKubernetesPrefix[] = "storage.kubernetes.io/";
constexpr size_t kMaxIdBytes = 128;

struct FeatureName {
  const char* name;
  uint64_t bit;
};
// What a StorageClass may ask for. Not journaling (RBD mirroring; doubles
// every write, nothing here uses it), not striping v2 or data-pool (set by
// the dataPool parameter): librbd 16 supports them, ublk-csi does not need them.
constexpr FeatureName kFeatures[] = {{"layering", kRbdLayering},
                                     {"exclusive-lock", kRbdExclusiveLock},
                                     {"object-map", kRbdObjectMap},
                                     {"fast-diff", kRbdFastDiff},
                                     {"deep-flatten", kRbdDeepFlatten}};

uint64_t Fnv1a64(absl::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

// Ceph pool names may hold almost anything; ours also end up in volume IDs
// (and so file names), hence the record-ID alphabet.
absl::Status ValidatePoolName(absl::string_view v, absl::string_view field) {
  if (v.empty()) return absl::InvalidArgumentError(absl::StrCat(field, " is required"));
  if (v.size() > 63 || v[0] == '.' || !std::all_of(v.begin(), v.end(), [](char c) {
        return absl::ascii_isalnum(c) || c == '_' || c == '-' || c == '.';
      })) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " '", EscapeForLog(v, 64),
                     "' is not a pool name ublk-csi accepts (1-63 of [A-Za-z0-9_.-], "
                     "not starting with '.')"));
  }
  return absl::OkStatus();
}

absl::Status ValidateClusterId(absl::string_view v, absl::string_view field) {
  if (v.empty()) return absl::InvalidArgumentError(absl::StrCat(field, " is required"));
  if (v.size() > 36 || !std::all_of(v.begin(), v.end(), [](char c) {
        return absl::ascii_isalnum(c) || c == '-' || c == '_';
      })) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, " '", EscapeForLog(v, 40), "' is not a cluster ID (1-36 of [A-Za-z0-9_-])"));
  }
  return absl::OkStatus();
}

// mon_host as ceph.conf takes it: comma (or space) separated addresses, each
// host:port, [v2:ip:port/0,v1:ip:port/0] or a bare host. Only the characters
// of such lists are allowed: the string goes into librados' configuration.
absl::Status ValidateMonitors(absl::string_view v, absl::string_view field) {
  if (v.empty()) return absl::InvalidArgumentError(absl::StrCat(field, " is required"));
  const bool ok = v.size() <= 1024 && std::all_of(v.begin(), v.end(), [](char c) {
                    return absl::ascii_isalnum(c) || c == '.' || c == ':' || c == ',' || c == '[' ||
                           c == ']' || c == '/' || c == '-' || c == '_' || c == ' ';
                  });
  if (!ok || absl::StripAsciiWhitespace(v).empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " '", EscapeForLog(v, 128),
                     "' is not a monitor list (e.g. 10.0.0.1:6789,10.0.0.2:6789)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<bool> SelectsRbd(const ParamMap& params, absl::string_view field) {
  auto it = params.find(kParamBackend);
  if (it == params.end() || it->second == "file") return false;
  if (it->second == "rbd") return true;
  return absl::InvalidArgumentError(absl::StrCat(field, ".", kParamBackend, " '",
                                                 EscapeForLog(it->second),
                                                 "' is not a backend (file or rbd)"));
}

absl::StatusOr<uint64_t> ParseImageFeatures(absl::string_view text, absl::string_view field) {
  uint64_t bits = 0;
  for (absl::string_view raw : absl::StrSplit(text, ',')) {
    absl::string_view name = absl::StripAsciiWhitespace(raw);
    if (name.empty()) continue;
    bool found = false;
    for (const FeatureName& f : kFeatures) {
      if (name == f.name) {
        bits |= f.bit;
        found = true;
      }
    }
    if (!found) {
      std::vector<std::string> known;
      for (const FeatureName& f : kFeatures) known.push_back(f.name);
      return absl::InvalidArgumentError(absl::StrCat(
          field, ": '", EscapeForLog(name, 64), "' is not an image feature ublk-csi supports (",
          absl::StrJoin(known, ", "), ")"));
    }
  }
  if (bits == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " is empty; name at least one feature (e.g. layering)"));
  }
  // librbd's own dependency rules (rbd_create4 would refuse with EINVAL).
  if ((bits & kRbdObjectMap) && !(bits & kRbdExclusiveLock)) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": object-map needs exclusive-lock"));
  }
  if ((bits & kRbdFastDiff) && !(bits & kRbdObjectMap)) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": fast-diff needs object-map"));
  }
  if (!(bits & kRbdLayering)) {
    // Snapshots restore and volumes clone through RBD clones.
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": layering is required (restores and clones are RBD clones)"));
  }
  return bits;
}

std::string ImageFeaturesString(uint64_t features) {
  std::vector<std::string> names;
  for (const FeatureName& f : kFeatures) {
    if (features & f.bit) names.push_back(f.name);
  }
  return absl::StrJoin(names, ",");
}

absl::StatusOr<RbdLocation> ParseRbdParams(const ParamMap& params, absl::string_view field,
                                           std::initializer_list<absl::string_view> also_known) {
  RbdLocation loc;
  auto get = [&](const char* key) -> std::string {
    auto it = params.find(key);
    return it == params.end() ? std::string() : it->second;
  };
  for (const auto& [k, v] : params) {
    if (absl::StartsWith(k, kReservedPrefix) || absl::StartsWith(k, kKubernetesPrefix)) continue;
    if (k == kParamBackend || k == kParamClusterID || k == kParamMonitors || k == kParamPool ||
        k == kParamDataPool || k == kParamImageFeatures || k == kContextImageName) {
      continue;
    }
    if (std::find(also_known.begin(), also_known.end(), k) != also_known.end()) continue;
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": unknown key '", EscapeForLog(k),
        "' for backend rbd (known: clusterID, monitors, pool, dataPool, imageFeatures, ",
        absl::StrJoin(also_known, ", "), ")"));
  }
  loc.cluster_id = get(kParamClusterID);
  RETURN_IF_ERROR(ValidateClusterId(loc.cluster_id, absl::StrCat(field, ".", kParamClusterID)));
  loc.monitors = std::string(absl::StripAsciiWhitespace(get(kParamMonitors)));
  RETURN_IF_ERROR(ValidateMonitors(loc.monitors, absl::StrCat(field, ".", kParamMonitors)));
  loc.pool = get(kParamPool);
  RETURN_IF_ERROR(ValidatePoolName(loc.pool, absl::StrCat(field, ".", kParamPool)));
  if (params.count(kParamDataPool) != 0) {
    loc.data_pool = get(kParamDataPool);
    RETURN_IF_ERROR(ValidatePoolName(loc.data_pool, absl::StrCat(field, ".", kParamDataPool)));
  }
  if (params.count(kParamImageFeatures) != 0) {
    absl::StatusOr<uint64_t> bits =
        ParseImageFeatures(get(kParamImageFeatures), absl::StrCat(field, ".", kParamImageFeatures));
    if (!bits.ok()) return bits.status();
    loc.features = *bits;
  }
  return loc;
}

absl::StatusOr<RbdCredentials> ParseRbdSecrets(const ParamMap& secrets, absl::string_view field) {
  RbdCredentials c;
  auto user = secrets.find(kSecretUserID);
  auto key = secrets.find(kSecretUserKey);
  if (user == secrets.end() || user->second.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".", kSecretUserID, " is required for an rbd volume (cephx user)"));
  }
  if (key == secrets.end() || key->second.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".", kSecretUserKey, " is required for an rbd volume (cephx key)"));
  }
  c.user = user->second;
  if (absl::StartsWith(c.user, "client.")) c.user.erase(0, 7);
  // The user name is not a secret, but it becomes librados' "name".
  if (c.user.empty() || c.user.size() > 64 ||
      !std::all_of(c.user.begin(), c.user.end(), [](char ch) {
        return absl::ascii_isalnum(ch) || ch == '-' || ch == '_' || ch == '.';
      })) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".", kSecretUserID, " '",
                                                   EscapeForLog(user->second, 64),
                                                   "' is not a cephx user name"));
  }
  // A cephx key is base64; say only that it is malformed, never what it is.
  const std::string& k = key->second;
  if (k.size() > 256 || !std::all_of(k.begin(), k.end(), [](char ch) {
        return absl::ascii_isalnum(ch) || ch == '+' || ch == '/' || ch == '=';
      })) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".", kSecretUserKey, " is not a base64 cephx key (value not shown)"));
  }
  c.key = k;
  return c;
}

std::string ImageNameFor(absl::string_view volume_name) {
  return absl::StrFormat("csi-vol-%016x", Fnv1a64(volume_name));
}

std::string SnapNameFor(absl::string_view snapshot_name) {
  return absl::StrFormat("csi-snap-%016x", Fnv1a64(snapshot_name));
}

absl::StatusOr<std::string> RbdVolumeId(const RbdLocation& loc, absl::string_view image) {
  std::string id = absl::StrCat("rbd.", loc.cluster_id, ".", loc.pool, ".", image);
  if (id.size() > kMaxIdBytes) {
    return absl::InvalidArgumentError(absl::StrCat("volume ID for pool '", loc.pool, "' would be ",
                                                   id.size(),
                                                   " bytes (at most 128): use a shorter pool or "
                                                   "clusterID"));
  }
  return id;
}

std::optional<ParsedRbdVolumeId> ParseRbdVolumeId(absl::string_view volume_id) {
  if (!absl::ConsumePrefix(&volume_id, "rbd.")) return std::nullopt;
  // clusterID has no '.', the image name has none either: the pool is what
  // lies between (and may hold dots).
  const size_t first = volume_id.find('.');
  const size_t last = volume_id.rfind('.');
  if (first == absl::string_view::npos || first == last || first == 0 ||
      last + 1 >= volume_id.size() || last == first + 1) {
    return std::nullopt;
  }
  ParsedRbdVolumeId out;
  out.cluster_id = std::string(volume_id.substr(0, first));
  out.pool = std::string(volume_id.substr(first + 1, last - first - 1));
  out.image = std::string(volume_id.substr(last + 1));
  if (!absl::StartsWith(out.image, "csi-vol-")) return std::nullopt;
  return out;
}

std::optional<std::string> RbdSnapshotId(absl::string_view volume_id, absl::string_view snap) {
  std::string id = absl::StrCat(volume_id, ".", snap);
  if (id.size() > kMaxIdBytes) return std::nullopt;
  return id;
}

std::optional<ParsedRbdSnapshotId> ParseRbdSnapshotId(absl::string_view snapshot_id) {
  const size_t dot = snapshot_id.rfind('.');
  if (dot == absl::string_view::npos) return std::nullopt;
  absl::string_view snap = snapshot_id.substr(dot + 1);
  // "csi-snap-" and 16 hex digits, as SnapNameFor makes it.
  if (!absl::ConsumePrefix(&snap, "csi-snap-") || snap.size() != 16 ||
      !std::all_of(snap.begin(), snap.end(), absl::ascii_isxdigit)) {
    return std::nullopt;
  }
  std::optional<ParsedRbdVolumeId> vol = ParseRbdVolumeId(snapshot_id.substr(0, dot));
  if (!vol) return std::nullopt;
  ParsedRbdSnapshotId out;
  out.volume_id = std::string(snapshot_id.substr(0, dot));
  out.volume = std::move(*vol);
  out.snap = std::string(snapshot_id.substr(dot + 1));
  return out;
}

absl::StatusOr<std::map<std::string, std::string>> ParseRbdClusters(absl::string_view text,
                                                                    absl::string_view source) {
  std::map<std::string, std::string> out;
  int n = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++n;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    std::vector<absl::string_view> f =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    const std::string where = absl::StrCat(source, " line ", n);
    if (f.size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": want \"clusterID monitors\" (two fields), got ", f.size()));
    }
    RETURN_IF_ERROR(ValidateClusterId(f[0], absl::StrCat(where, ": clusterID")));
    RETURN_IF_ERROR(ValidateMonitors(f[1], absl::StrCat(where, ": monitors")));
    if (!out.emplace(std::string(f[0]), std::string(f[1])).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": clusterID '", f[0], "' given twice"));
    }
  }
  return out;
}

}  // namespace ublk_csi
