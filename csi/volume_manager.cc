// VolumeManager: construction, loading, locks, helpers, and the Controller
// half. The Node half is in volume_manager_node.cc.
#include "csi/volume_manager.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <limits>
#include <cerrno>
#include <cstring>
#include <ctime>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "glog/logging.h"
#include "ublk/errno.h"
#include "ublk/mutex.h"
#include "ublk/status_macros.h"
#include "ublk/unique_fd.h"

namespace ublk_csi {

using csi::v1::VolumeCapability;
using records::SnapshotRecord;
using records::VolumeRecord;

namespace {

constexpr int64_t kAlign = 4096;
constexpr char kParamFsType[] = "fsType";
constexpr char kParamBlockSize[] = "blockSize";
constexpr char kReservedParamPrefix[] = "csi.storage.k8s.io/";

using ublk::Errno;

int64_t RoundUp(int64_t v, int64_t a) { return (v + a - 1) / a * a; }

std::string NewId(absl::string_view prefix) {
  static ublk::Mutex* mu = new ublk::Mutex;
  static absl::BitGen* gen = new absl::BitGen;
  ublk::MutexLock lock(&*mu);
  return absl::StrFormat("%s-%016x", prefix, absl::Uniform<uint64_t>(*gen));
}

// Parameters that take part in the same-name idempotency comparison.
std::map<std::string, std::string> UserParams(
    const google::protobuf::Map<std::string, std::string>& params) {
  std::map<std::string, std::string> out;
  for (const auto& [k, v] : params) {
    if (!absl::StartsWith(k, kReservedParamPrefix)) out[k] = v;
  }
  return out;
}

// Resolves a capacity range into a size: INVALID_ARGUMENT for a malformed
// range, OUT_OF_RANGE when no aligned size fits it.
absl::StatusOr<int64_t> SizeFor(const csi::v1::CapacityRange& range, int64_t dflt,
                                absl::string_view field) {
  const int64_t req = range.required_bytes();
  const int64_t lim = range.limit_bytes();
  if (req < 0) return absl::InvalidArgumentError(absl::StrCat(field, ".required_bytes < 0"));
  if (lim < 0) return absl::InvalidArgumentError(absl::StrCat(field, ".limit_bytes < 0"));
  if (lim != 0 && req > lim) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".required_bytes (", req,
                                                   ") > limit_bytes (", lim, ")"));
  }
  if (req == 0) {
    if (lim == 0 || lim >= dflt) return dflt;
    int64_t s = lim / kAlign * kAlign;
    if (s == 0) {
      return absl::OutOfRangeError(
          absl::StrCat(field, ".limit_bytes ", lim, " is below the minimum size ", kAlign));
    }
    return s;
  }
  if (req > std::numeric_limits<int64_t>::max() - (kAlign - 1)) {  // RoundUp would overflow
    return absl::OutOfRangeError(absl::StrCat(field, ".required_bytes ", req, " is too large"));
  }
  int64_t s = RoundUp(req, kAlign);
  if (lim != 0 && s > lim) {
    return absl::OutOfRangeError(absl::StrCat(field, ": no multiple of ", kAlign,
                                              " bytes lies in [", req, ", ", lim, "]"));
  }
  return s;
}

bool FitsRange(int64_t size, const csi::v1::CapacityRange& range) {
  return size >= range.required_bytes() && (range.limit_bytes() == 0 || size <= range.limit_bytes());
}

absl::Status ValidateCapabilities(
    const google::protobuf::RepeatedPtrField<VolumeCapability>& caps, absl::string_view field) {
  if (caps.empty()) return absl::InvalidArgumentError(absl::StrCat(field, " is required"));
  for (int i = 0; i < caps.size(); ++i) {
    RETURN_IF_ERROR(ValidateCapability(caps[i], absl::StrCat(field, "[", i, "]")));
  }
  return absl::OkStatus();
}

// Copies src to dst (created, must not exist): a reflink where the
// filesystem shares extents, else a copy of only the data extents so holes
// stay holes. Then sets dst's size to `size` (>= src size).
absl::Status CloneFile(const std::string& src, const std::string& dst, int64_t size) {
  ublk::UniqueFd in(::open(src.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in.valid()) return absl::NotFoundError(absl::StrCat("open ", src, ": ", Errno(errno)));
  ublk::UniqueFd out(::open(dst.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!out.valid()) return absl::InternalError(absl::StrCat("create ", dst, ": ", Errno(errno)));
  struct stat st;
  if (::fstat(in.get(), &st) != 0) {
    return absl::InternalError(absl::StrCat("stat ", src, ": ", Errno(errno)));
  }
  if (::ioctl(out.get(), FICLONE, in.get()) != 0) {
    if (errno != EOPNOTSUPP && errno != EXDEV && errno != EINVAL && errno != ENOTTY) {
      return absl::InternalError(absl::StrCat("reflink ", src, " -> ", dst, ": ", Errno(errno)));
    }
    VLOG(1) << "no reflink for " << src << " (" << Errno(errno) << "); sparse copy";
    std::vector<char> buf(1 << 20);
    off_t data = 0;
    for (;;) {
      data = ::lseek(in.get(), data, SEEK_DATA);
      if (data < 0) {
        if (errno == ENXIO) break;  // no more data
        return absl::InternalError(absl::StrCat("seek data in ", src, ": ", Errno(errno)));
      }
      off_t hole = ::lseek(in.get(), data, SEEK_HOLE);
      if (hole < 0) hole = st.st_size;
      for (off_t off = data; off < hole;) {
        size_t want = static_cast<size_t>(std::min<off_t>(hole - off, static_cast<off_t>(buf.size())));
        ssize_t n = ::pread(in.get(), buf.data(), want, off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          return absl::InternalError(absl::StrCat("read ", src, ": ", n == 0 ? "short read" : Errno(errno)));
        }
        for (ssize_t done = 0; done < n;) {
          ssize_t w = ::pwrite(out.get(), buf.data() + done, static_cast<size_t>(n - done), off + done);
          if (w < 0 && errno == EINTR) continue;
          if (w < 0) {
            int err = errno;
            return err == ENOSPC || err == EDQUOT
                       ? absl::ResourceExhaustedError(absl::StrCat("write ", dst, ": ", Errno(err)))
                       : absl::InternalError(absl::StrCat("write ", dst, ": ", Errno(err)));
          }
          done += w;
        }
        off += n;
      }
      data = hole;
    }
  }
  if (::ftruncate(out.get(), std::max<off_t>(size, st.st_size)) != 0) {
    return absl::InternalError(absl::StrCat("truncate ", dst, ": ", Errno(errno)));
  }
  if (::fsync(out.get()) != 0) return absl::InternalError(absl::StrCat("fsync ", dst, ": ", Errno(errno)));
  return absl::OkStatus();
}

absl::Status CreateSparse(const std::string& path, int64_t size) {
  ublk::UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd.valid()) return absl::InternalError(absl::StrCat("create ", path, ": ", Errno(errno)));
  if (::ftruncate(fd.get(), size) != 0) {
    int err = errno;
    return err == EFBIG || err == ENOSPC
               ? absl::ResourceExhaustedError(absl::StrCat("size ", path, " to ", size, ": ", Errno(err)))
               : absl::InternalError(absl::StrCat("size ", path, " to ", size, ": ", Errno(err)));
  }
  if (::fsync(fd.get()) != 0) return absl::InternalError(absl::StrCat("fsync ", path, ": ", Errno(errno)));
  return absl::OkStatus();
}

void Unlink(const std::string& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    LOG(WARNING) << "unlink " << path << ": " << Errno(errno);
  }
}

// Page tokens name the last ID of the previous page ("after:<id>"), so a
// volume created or deleted between two pages shifts nothing; anything else
// is not a token we issued (ABORTED, as the spec asks).
constexpr char kTokenPrefix[] = "after:";

template <typename T, typename IdOf>
absl::StatusOr<size_t> ParseToken(const std::string& token, const std::vector<T>& sorted,
                                  IdOf id_of) {
  if (token.empty()) return 0;
  absl::string_view after = token;
  if (!absl::ConsumePrefix(&after, kTokenPrefix) || !ValidateId(after, "starting_token").ok()) {
    return absl::AbortedError(absl::StrCat("starting_token '", token, "' is not valid"));
  }
  size_t i = 0;
  while (i < sorted.size() && absl::string_view(id_of(sorted[i])) <= after) ++i;
  return i;
}

}  // namespace

absl::Status ValidatePath(absl::string_view path, absl::string_view field) {
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat(field, " is required"));
  if (path[0] != '/') {
    return absl::InvalidArgumentError(absl::StrCat(field, " '", path, "' is not absolute"));
  }
  if (path.size() > 4096) return absl::InvalidArgumentError(absl::StrCat(field, " too long"));
  if (path.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(field, " contains a NUL byte"));
  }
  if (path == "/") return absl::InvalidArgumentError(absl::StrCat(field, " must not be /"));
  for (absl::string_view comp : absl::StrSplit(path.substr(1), '/')) {
    if (comp.empty() || comp == "." || comp == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat(field, " '", path, "' is not clean (empty, . or .. component)"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateCapability(const VolumeCapability& cap, absl::string_view field) {
  switch (cap.access_type_case()) {
    case VolumeCapability::kBlock:
      break;
    case VolumeCapability::kMount: {
      const std::string& fs = cap.mount().fs_type();
      if (!fs.empty() && fs != "ext4" && fs != "xfs") {
        return absl::InvalidArgumentError(absl::StrCat(
            field, ".mount.fs_type '", fs, "' is not supported (ext4 or xfs)"));
      }
      break;
    }
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".access_type is required (block or mount)"));
  }
  if (!cap.has_access_mode()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".access_mode is required"));
  }
  using Mode = VolumeCapability::AccessMode;
  switch (cap.access_mode().mode()) {
    case Mode::SINGLE_NODE_WRITER:
    case Mode::SINGLE_NODE_READER_ONLY:
    case Mode::SINGLE_NODE_SINGLE_WRITER:
    case Mode::SINGLE_NODE_MULTI_WRITER:
      return absl::OkStatus();
    case Mode::UNKNOWN:
      return absl::InvalidArgumentError(absl::StrCat(field, ".access_mode.mode is required"));
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".access_mode.mode ", Mode::Mode_Name(cap.access_mode().mode()),
          " is not supported: ublk volumes are node-local (single-node modes only)"));
  }
}

absl::StatusOr<int64_t> ParseSize(absl::string_view text) {
  absl::string_view s = absl::StripAsciiWhitespace(text);
  static const std::pair<const char*, int64_t> kSuffixes[] = {
      {"Ki", int64_t{1} << 10}, {"Mi", int64_t{1} << 20}, {"Gi", int64_t{1} << 30},
      {"Ti", int64_t{1} << 40}, {"K", 1000},              {"k", 1000},
      {"M", 1000000},           {"G", 1000000000},        {"T", 1000000000000}};
  int64_t mult = 1;
  for (const auto& [suf, m] : kSuffixes) {
    if (absl::ConsumeSuffix(&s, suf)) {
      mult = m;
      break;
    }
  }
  int64_t v = 0;
  if (s.empty() || !absl::SimpleAtoi(s, &v) || v < 0 || v > INT64_MAX / mult) {
    return absl::InvalidArgumentError(absl::StrCat("size '", text, "' is not a size (e.g. 1Gi, 512Mi, 4096)"));
  }
  return v * mult;
}

VolumeManager::VolumeManager(VolumeManagerOptions options, RecordStore* store,
                             VolumeBackend* backend, Mounter* mounter)
    : options_(std::move(options)), store_(store), backend_(backend), mounter_(mounter) {}

VolumeManager::KeyLock::~KeyLock() {
  if (m_ == nullptr) return;
  ublk::MutexLock lock(&m_->mu_);
  m_->busy_.erase(key_);
}

absl::StatusOr<VolumeManager::KeyLock> VolumeManager::TryLock(const std::string& key,
                                                              absl::string_view what) {
  ublk::MutexLock lock(&mu_);
  if (!busy_.insert(key).second) {
    return absl::AbortedError(
        absl::StrCat("an operation on ", what, " is already in progress; retry later"));
  }
  return KeyLock(this, key);
}

std::optional<VolumeRecord> VolumeManager::FindVolume(const std::string& id) {
  ublk::MutexLock lock(&mu_);
  auto it = volumes_.find(id);
  if (it == volumes_.end()) return std::nullopt;
  return it->second;
}

std::optional<SnapshotRecord> VolumeManager::FindSnapshot(const std::string& id) {
  ublk::MutexLock lock(&mu_);
  auto it = snapshots_.find(id);
  if (it == snapshots_.end()) return std::nullopt;
  return it->second;
}

absl::StatusOr<VolumeRecord> VolumeManager::GetRecord(const std::string& volume_id) {
  std::optional<VolumeRecord> rec = FindVolume(volume_id);
  if (!rec) return absl::NotFoundError(absl::StrCat("volume ", volume_id, " does not exist"));
  return *rec;
}

absl::Status VolumeManager::SaveVolume(const VolumeRecord& rec) {
  RETURN_IF_ERROR(store_->PutVolume(rec));
  ublk::MutexLock lock(&mu_);
  volumes_[rec.volume_id()] = rec;
  return absl::OkStatus();
}

absl::Status VolumeManager::SaveSnapshot(const SnapshotRecord& rec) {
  RETURN_IF_ERROR(store_->PutSnapshot(rec));
  ublk::MutexLock lock(&mu_);
  snapshots_[rec.snapshot_id()] = rec;
  return absl::OkStatus();
}

absl::Status VolumeManager::ForgetVolume(const std::string& id) {
  RETURN_IF_ERROR(store_->DeleteVolume(id));
  ublk::MutexLock lock(&mu_);
  volumes_.erase(id);
  return absl::OkStatus();
}

absl::Status VolumeManager::ForgetSnapshot(const std::string& id) {
  RETURN_IF_ERROR(store_->DeleteSnapshot(id));
  ublk::MutexLock lock(&mu_);
  snapshots_.erase(id);
  return absl::OkStatus();
}

absl::StatusOr<int64_t> VolumeManager::FreeBytes() {
  if (options_.free_bytes) return options_.free_bytes();
  struct statvfs s;
  if (::statvfs(store_->data_dir().c_str(), &s) != 0) {
    return absl::InternalError(absl::StrCat("statvfs ", store_->data_dir(), ": ", Errno(errno)));
  }
  return static_cast<int64_t>(s.f_bavail) * static_cast<int64_t>(s.f_frsize);
}

csi::v1::Topology VolumeManager::NodeTopology() const {
  csi::v1::Topology t;
  (*t.mutable_segments())[kTopologyKey] = options_.node_id;
  return t;
}

absl::Status VolumeManager::CheckTopology(const csi::v1::TopologyRequirement& req) const {
  auto ours = [this](const csi::v1::Topology& t) {
    if (t.segments().empty()) return false;
    for (const auto& [k, v] : t.segments()) {
      if (k != kTopologyKey || v != options_.node_id) return false;
    }
    return true;
  };
  // Volumes live on this node only: one of the requisite topologies (or, if
  // none are required, of the preferred ones) must be this node.
  const auto& list = req.requisite().empty() ? req.preferred() : req.requisite();
  if (list.empty()) return absl::OkStatus();
  for (const auto& t : list) {
    if (ours(t)) return absl::OkStatus();
  }
  return absl::ResourceExhaustedError(
      absl::StrCat("accessibility_requirements do not include this node (",
                   kTopologyKey, "=", options_.node_id,
                   "); ublk volumes can only be provisioned on the node they are served from"));
}

void VolumeManager::FillVolume(const VolumeRecord& rec, csi::v1::Volume* out) const {
  out->set_volume_id(rec.volume_id());
  out->set_capacity_bytes(rec.capacity_bytes());
  auto& ctx = *out->mutable_volume_context();
  ctx["name"] = rec.name();
  ctx["fsType"] = rec.fs_type();
  ctx["accessType"] = rec.access_type() == VolumeRecord::BLOCK ? "block" : "mount";
  *out->add_accessible_topology() = NodeTopology();
  if (rec.content_source_case() == VolumeRecord::kSourceSnapshotId) {
    out->mutable_content_source()->mutable_snapshot()->set_snapshot_id(rec.source_snapshot_id());
  } else if (rec.content_source_case() == VolumeRecord::kSourceVolumeId) {
    out->mutable_content_source()->mutable_volume()->set_volume_id(rec.source_volume_id());
  }
}

absl::Status VolumeManager::Load() {
  ASSIGN_OR_RETURN(RecordStore::Loaded loaded, store_->LoadAll());
  for (VolumeRecord& rec : loaded.volumes) {
    const std::string id = rec.volume_id();
    if (rec.state() == VolumeRecord::CREATING) {
      // The create never answered; the CO retries it. Roll back.
      LOG(WARNING) << "volume " << id << ": create was interrupted; rolling back";
      Unlink(store_->Abs(rec.backing_file()));
      RETURN_IF_ERROR(store_->DeleteVolume(id));
      continue;
    }
    if (rec.state() == VolumeRecord::DELETING) {
      LOG(WARNING) << "volume " << id << ": delete was interrupted; finishing it";
      Unlink(store_->Abs(rec.backing_file()));
      RETURN_IF_ERROR(store_->DeleteVolume(id));
      continue;
    }
    ublk::MutexLock lock(&mu_);
    volumes_[id] = std::move(rec);
  }
  for (SnapshotRecord& rec : loaded.snapshots) {
    if (!rec.ready_to_use()) {
      LOG(WARNING) << "snapshot " << rec.snapshot_id() << ": creation was interrupted; rolling back";
      Unlink(store_->Abs(rec.file()));
      RETURN_IF_ERROR(store_->DeleteSnapshot(rec.snapshot_id()));
      continue;
    }
    ublk::MutexLock lock(&mu_);
    snapshots_[rec.snapshot_id()] = std::move(rec);
  }
  ublk::MutexLock lock(&mu_);
  LOG(INFO) << "loaded " << volumes_.size() << " volume and " << snapshots_.size()
            << " snapshot records" << (loaded.set_aside.empty() ? "" : absl::StrCat(
            "; ", loaded.set_aside.size(), " corrupt records set aside"));
  return absl::OkStatus();
}

absl::StatusOr<csi::v1::CreateVolumeResponse> VolumeManager::CreateVolume(
    const csi::v1::CreateVolumeRequest& req) {
  if (req.name().empty()) return absl::InvalidArgumentError("name is required");
  RETURN_IF_ERROR(ValidateCapabilities(req.volume_capabilities(), "volume_capabilities"));
  bool block = false, mount = false;
  std::string cap_fs;
  for (const VolumeCapability& cap : req.volume_capabilities()) {
    if (cap.has_block()) block = true;
    if (cap.has_mount()) {
      mount = true;
      if (!cap.mount().fs_type().empty()) cap_fs = cap.mount().fs_type();
    }
  }
  if (block && mount) {
    return absl::InvalidArgumentError(
        "volume_capabilities ask for both block and mount access; a volume is one or the other");
  }
  std::string fs_type = "ext4";
  for (const auto& [k, v] : req.parameters()) {
    if (absl::StartsWith(k, kReservedParamPrefix)) continue;
    if (k == kParamFsType) {
      if (v != "ext4" && v != "xfs") {
        return absl::InvalidArgumentError(
            absl::StrCat("parameters.fsType '", v, "' is not supported (ext4 or xfs)"));
      }
      fs_type = v;
    } else if (k == kParamBlockSize) {
      if (v != "512" && v != "4096") {
        return absl::InvalidArgumentError(
            absl::StrCat("parameters.blockSize '", v, "' is not supported (512 or 4096)"));
      }
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("parameters: unknown key '", k, "' (known: fsType, blockSize)"));
    }
  }
  if (!cap_fs.empty()) {
    if (req.parameters().count(kParamFsType) != 0 && cap_fs != fs_type) {
      return absl::InvalidArgumentError(absl::StrCat("volume_capabilities mount.fs_type ", cap_fs,
                                                     " contradicts parameters.fsType ", fs_type));
    }
    fs_type = cap_fs;
  }
  ASSIGN_OR_RETURN(int64_t size,
                   SizeFor(req.capacity_range(), options_.default_volume_bytes, "capacity_range"));
  if (req.has_accessibility_requirements()) {
    RETURN_IF_ERROR(CheckTopology(req.accessibility_requirements()));
  }
  std::string src_snapshot, src_volume;
  if (req.has_volume_content_source()) {
    const auto& src = req.volume_content_source();
    if (src.has_snapshot()) {
      src_snapshot = src.snapshot().snapshot_id();
      RETURN_IF_ERROR(ValidateId(src_snapshot, "volume_content_source.snapshot.snapshot_id"));
    } else if (src.has_volume()) {
      src_volume = src.volume().volume_id();
      RETURN_IF_ERROR(ValidateId(src_volume, "volume_content_source.volume.volume_id"));
    } else {
      return absl::InvalidArgumentError("volume_content_source has neither snapshot nor volume");
    }
  }

  ASSIGN_OR_RETURN(KeyLock name_lock, TryLock("name:" + req.name(), "volume name " + req.name()));
  std::optional<VolumeRecord> existing;
  {
    ublk::MutexLock lock(&mu_);
    for (const auto& [_, rec] : volumes_) {
      if (rec.name() == req.name()) existing = rec;
    }
  }
  const VolumeRecord::AccessType access = block ? VolumeRecord::BLOCK : VolumeRecord::MOUNT;
  if (existing && existing->state() != VolumeRecord::READY) {
    return absl::AbortedError(absl::StrCat("volume name ", req.name(), " (", existing->volume_id(),
                                           ") is being deleted; retry later"));
  }
  if (existing) {
    std::map<std::string, std::string> old_params(existing->parameters().begin(),
                                                  existing->parameters().end());
    const bool same = FitsRange(existing->capacity_bytes(), req.capacity_range()) &&
                      UserParams(req.parameters()) == old_params &&
                      existing->access_type() == access &&
                      existing->source_snapshot_id() == src_snapshot &&
                      existing->source_volume_id() == src_volume &&
                      (access == VolumeRecord::BLOCK || existing->fs_type() == fs_type);
    if (!same) {
      return absl::AlreadyExistsError(absl::StrCat(
          "volume name ", req.name(), " exists as ", existing->volume_id(),
          " with a different size, parameters, capabilities or content source"));
    }
    csi::v1::CreateVolumeResponse resp;
    FillVolume(*existing, resp.mutable_volume());
    return resp;
  }

  // Content source: the data to start from and its size.
  std::string source_file;
  std::optional<KeyLock> source_lock;
  std::optional<VolumeRecord> source_volume;  // a clone's source, to freeze while copied
  if (!src_snapshot.empty()) {
    std::optional<SnapshotRecord> snap = FindSnapshot(src_snapshot);
    if (!snap) return absl::NotFoundError(absl::StrCat("snapshot ", src_snapshot, " does not exist"));
    if (size < snap->size_bytes()) {
      return absl::OutOfRangeError(absl::StrCat("capacity ", size, " is smaller than snapshot ",
                                                src_snapshot, " (", snap->size_bytes(), " bytes)"));
    }
    source_file = store_->Abs(snap->file());
  } else if (!src_volume.empty()) {
    ASSIGN_OR_RETURN(KeyLock l, TryLock(src_volume, "source volume " + src_volume));
    source_lock.emplace(std::move(l));
    std::optional<VolumeRecord> vol = FindVolume(src_volume);
    if (!vol) return absl::NotFoundError(absl::StrCat("source volume ", src_volume, " does not exist"));
    if (size < vol->capacity_bytes()) {
      return absl::OutOfRangeError(absl::StrCat("capacity ", size, " is smaller than volume ",
                                                src_volume, " (", vol->capacity_bytes(), " bytes)"));
    }
    source_file = store_->Abs(vol->backing_file());
    source_volume = std::move(vol);
  }
  ASSIGN_OR_RETURN(int64_t free_bytes, FreeBytes());
  if (size > free_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("volume ", req.name(), ": ", size,
                                                     " bytes requested, data dir has ",
                                                     free_bytes, " free"));
  }

  VolumeRecord rec;
  rec.set_volume_id(NewId("vol"));
  rec.set_name(req.name());
  rec.set_state(VolumeRecord::CREATING);
  rec.set_created_at(::time(nullptr));
  rec.set_capacity_bytes(size);
  for (const auto& [k, v] : UserParams(req.parameters())) (*rec.mutable_parameters())[k] = v;
  rec.set_access_type(access);
  rec.set_fs_type(access == VolumeRecord::BLOCK ? "" : fs_type);
  if (!src_snapshot.empty()) rec.set_source_snapshot_id(src_snapshot);
  if (!src_volume.empty()) rec.set_source_volume_id(src_volume);
  rec.set_backing_file(RecordStore::VolumeFileRel(rec.volume_id()));
  rec.set_dev_id(-1);
  // A restored volume brings its filesystem with it.
  rec.set_filesystem_created(false);
  ASSIGN_OR_RETURN(KeyLock vol_lock, TryLock(rec.volume_id(), "volume " + rec.volume_id()));
  // The record goes first: after a crash it says which file to roll back.
  RETURN_IF_ERROR(store_->PutVolume(rec));
  const std::string path = store_->Abs(rec.backing_file());
  absl::Status made;
  if (source_file.empty()) {
    made = CreateSparse(path, size);
  } else {
    absl::StatusOr<std::string> frozen =
        source_volume ? FreezeForCopy(*source_volume, "clone " + rec.volume_id()) : std::string();
    made = frozen.status();
    if (made.ok()) {
      made = CloneFile(source_file, path, size);
      if (source_volume) ThawAfterCopy(source_volume->volume_id(), *frozen);
    }
  }
  if (made.ok()) {
    rec.set_state(VolumeRecord::READY);
    made = SaveVolume(rec);
  }
  if (!made.ok()) {
    Unlink(path);
    store_->DeleteVolume(rec.volume_id()).IgnoreError();
    return made;
  }
  LOG(INFO) << "created volume " << rec.volume_id() << " (" << req.name() << ", " << size
            << " bytes" << (source_file.empty() ? "" : ", from " + source_file) << ")";
  csi::v1::CreateVolumeResponse resp;
  FillVolume(rec, resp.mutable_volume());
  return resp;
}

absl::StatusOr<csi::v1::DeleteVolumeResponse> VolumeManager::DeleteVolume(
    const csi::v1::DeleteVolumeRequest& req) {
  RETURN_IF_ERROR(ValidateId(req.volume_id(), "volume_id"));
  ASSIGN_OR_RETURN(KeyLock lock, TryLock(req.volume_id(), "volume " + req.volume_id()));
  std::optional<VolumeRecord> rec = FindVolume(req.volume_id());
  if (!rec) return csi::v1::DeleteVolumeResponse();  // already gone: success
  if (!rec->staged_path().empty() || rec->published_paths_size() > 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "volume ", req.volume_id(), " is in use (staged at '", rec->staged_path(), "', ",
        rec->published_paths_size(), " publications); unpublish and unstage it first"));
  }
  rec->set_state(VolumeRecord::DELETING);
  RETURN_IF_ERROR(SaveVolume(*rec));
  RETURN_IF_ERROR(backend_->RemoveExport(rec->volume_id()));
  const std::string path = store_->Abs(rec->backing_file());
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return absl::InternalError(absl::StrCat("volume ", rec->volume_id(), ": unlink ", path, ": ",
                                            Errno(errno)));
  }
  RETURN_IF_ERROR(ForgetVolume(rec->volume_id()));
  LOG(INFO) << "deleted volume " << rec->volume_id() << " (" << rec->name() << ")";
  return csi::v1::DeleteVolumeResponse();
}

absl::StatusOr<csi::v1::ValidateVolumeCapabilitiesResponse>
VolumeManager::ValidateVolumeCapabilities(const csi::v1::ValidateVolumeCapabilitiesRequest& req) {
  RETURN_IF_ERROR(ValidateId(req.volume_id(), "volume_id"));
  if (req.volume_capabilities().empty()) {
    return absl::InvalidArgumentError("volume_capabilities is required");
  }
  for (int i = 0; i < req.volume_capabilities_size(); ++i) {
    const VolumeCapability& cap = req.volume_capabilities(i);
    if (cap.access_type_case() == VolumeCapability::ACCESS_TYPE_NOT_SET) {
      return absl::InvalidArgumentError(
          absl::StrCat("volume_capabilities[", i, "].access_type is required"));
    }
    if (!cap.has_access_mode()) {
      return absl::InvalidArgumentError(
          absl::StrCat("volume_capabilities[", i, "].access_mode is required"));
    }
  }
  ASSIGN_OR_RETURN(VolumeRecord rec, GetRecord(req.volume_id()));
  csi::v1::ValidateVolumeCapabilitiesResponse resp;
  for (int i = 0; i < req.volume_capabilities_size(); ++i) {
    const VolumeCapability& cap = req.volume_capabilities(i);
    absl::Status s = ValidateCapability(cap, absl::StrCat("volume_capabilities[", i, "]"));
    if (s.ok() && cap.has_block() != (rec.access_type() == VolumeRecord::BLOCK)) {
      s = absl::InvalidArgumentError(absl::StrCat(
          "volume_capabilities[", i, "]: volume is a ",
          rec.access_type() == VolumeRecord::BLOCK ? "block" : "mount", " volume"));
    }
    if (s.ok() && cap.has_mount() && !cap.mount().fs_type().empty() &&
        cap.mount().fs_type() != rec.fs_type()) {
      s = absl::InvalidArgumentError(absl::StrCat("volume_capabilities[", i, "]: volume has ",
                                                  rec.fs_type(), ", not ", cap.mount().fs_type()));
    }
    if (!s.ok()) {
      resp.set_message(std::string(s.message()));
      return resp;  // not confirmed
    }
  }
  for (const auto& [k, v] : req.parameters()) {
    if (absl::StartsWith(k, kReservedParamPrefix)) continue;
    auto it = rec.parameters().find(k);
    if (it == rec.parameters().end() || it->second != v) {
      resp.set_message(absl::StrCat("parameter ", k, "=", v, " does not match the volume"));
      return resp;
    }
  }
  auto* confirmed = resp.mutable_confirmed();
  *confirmed->mutable_volume_capabilities() = req.volume_capabilities();
  *confirmed->mutable_volume_context() = req.volume_context();
  *confirmed->mutable_parameters() = req.parameters();
  return resp;
}

absl::StatusOr<csi::v1::ListVolumesResponse> VolumeManager::ListVolumes(
    const csi::v1::ListVolumesRequest& req) {
  if (req.max_entries() < 0) return absl::InvalidArgumentError("max_entries must not be negative");
  std::vector<VolumeRecord> all;
  {
    ublk::MutexLock lock(&mu_);
    for (const auto& [_, rec] : volumes_) all.push_back(rec);  // sorted by id
  }
  ASSIGN_OR_RETURN(size_t start,
                   ParseToken(req.starting_token(), all,
                              [](const VolumeRecord& r) -> const std::string& { return r.volume_id(); }));
  size_t end = req.max_entries() == 0 ? all.size()
                                      : std::min(all.size(), start + static_cast<size_t>(req.max_entries()));
  csi::v1::ListVolumesResponse resp;
  for (size_t i = start; i < end; ++i) {
    auto* entry = resp.add_entries();
    FillVolume(all[i], entry->mutable_volume());
    // VOLUME_CONDITION: the export's live state, "key=value ..." so that
    // `ublk-csi-ctl status` and humans can both read it.
    ExportStatus es = backend_->GetExportStatus(all[i].volume_id());
    auto* cond = entry->mutable_status()->mutable_volume_condition();
    const bool staged = !all[i].staged_path().empty();
    cond->set_abnormal(es.state == ExportState::kFailed || es.state == ExportState::kDegraded ||
                       (staged && es.state != ExportState::kLive));
    cond->set_message(absl::StrCat("state=", ExportStateName(es.state),
                                   " device=", es.device_path.empty() ? "-" : es.device_path,
                                   " worker=", es.worker, " copy_mode=",
                                   es.copy_mode.empty() ? "-" : es.copy_mode,
                                   " staged=", staged ? "yes" : "no",
                                   es.message.empty() ? "" : " message=", es.message));
  }
  if (end < all.size()) resp.set_next_token(absl::StrCat(kTokenPrefix, all[end - 1].volume_id()));
  return resp;
}

absl::StatusOr<csi::v1::GetCapacityResponse> VolumeManager::GetCapacity(
    const csi::v1::GetCapacityRequest& req) {
  for (int i = 0; i < req.volume_capabilities_size(); ++i) {
    RETURN_IF_ERROR(ValidateCapability(req.volume_capabilities(i),
                                       absl::StrCat("volume_capabilities[", i, "]")));
  }
  for (const auto& [k, v] : req.parameters()) {
    if (!absl::StartsWith(k, kReservedParamPrefix) && k != kParamFsType && k != kParamBlockSize) {
      return absl::InvalidArgumentError(absl::StrCat("parameters: unknown key '", k, "'"));
    }
  }
  csi::v1::GetCapacityResponse resp;
  if (req.has_accessible_topology()) {
    for (const auto& [k, v] : req.accessible_topology().segments()) {
      if (k != kTopologyKey || v != options_.node_id) return resp;  // not here: 0
    }
  }
  ASSIGN_OR_RETURN(int64_t free_bytes, FreeBytes());
  resp.set_available_capacity(free_bytes);
  resp.mutable_maximum_volume_size()->set_value(free_bytes);
  resp.mutable_minimum_volume_size()->set_value(kAlign);
  return resp;
}

absl::StatusOr<csi::v1::ControllerExpandVolumeResponse> VolumeManager::ControllerExpandVolume(
    const csi::v1::ControllerExpandVolumeRequest& req) {
  RETURN_IF_ERROR(ValidateId(req.volume_id(), "volume_id"));
  if (!req.has_capacity_range()) return absl::InvalidArgumentError("capacity_range is required");
  if (req.has_volume_capability()) {
    RETURN_IF_ERROR(ValidateCapability(req.volume_capability(), "volume_capability"));
  }
  ASSIGN_OR_RETURN(int64_t size, SizeFor(req.capacity_range(), 0, "capacity_range"));
  if (size == 0) return absl::InvalidArgumentError("capacity_range.required_bytes is required");
  ASSIGN_OR_RETURN(KeyLock lock, TryLock(req.volume_id(), "volume " + req.volume_id()));
  ASSIGN_OR_RETURN(VolumeRecord rec, GetRecord(req.volume_id()));
  csi::v1::ControllerExpandVolumeResponse resp;
  if (size <= rec.capacity_bytes()) {
    // Never shrink; already this big (or bigger) is success.
    if (req.capacity_range().limit_bytes() != 0 &&
        rec.capacity_bytes() > req.capacity_range().limit_bytes()) {
      return absl::OutOfRangeError(absl::StrCat("volume ", rec.volume_id(), " is already ",
                                                rec.capacity_bytes(), " bytes, above limit_bytes"));
    }
    resp.set_capacity_bytes(rec.capacity_bytes());
    resp.set_node_expansion_required(false);
    return resp;
  }
  ASSIGN_OR_RETURN(int64_t free_bytes, FreeBytes());
  if (size - rec.capacity_bytes() > free_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("volume ", rec.volume_id(), ": growing to ",
                                                     size, " bytes needs more than the ",
                                                     free_bytes, " bytes free"));
  }
  const std::string path = store_->Abs(rec.backing_file());
  if (::truncate(path.c_str(), size) != 0) {
    return absl::InternalError(absl::StrCat("volume ", rec.volume_id(), ": grow ", path, " to ",
                                            size, ": ", Errno(errno)));
  }
  rec.set_capacity_bytes(size);
  RETURN_IF_ERROR(SaveVolume(rec));
  LOG(INFO) << "volume " << rec.volume_id() << ": backing file grown to " << size << " bytes";
  resp.set_capacity_bytes(size);
  // The device (and for mount volumes the filesystem) grows on the node.
  resp.set_node_expansion_required(true);
  return resp;
}

absl::StatusOr<std::string> VolumeManager::FreezeForCopy(const VolumeRecord& vol,
                                                        absl::string_view why) {
  if (vol.staged_path().empty()) return std::string();
  const std::string ctx = absl::StrCat("volume ", vol.volume_id(), " (", why, ")");
  if (vol.access_type() == VolumeRecord::BLOCK) {
    LOG(WARNING) << ctx << ": a staged block volume cannot be frozen; its data is copied while "
                 << "in use (consistent only if the application is quiesced)";
    return std::string();
  }
  const std::string& path = vol.staged_path();
  ASSIGN_OR_RETURN(std::optional<MountInfo> mounted, mounter_->GetMountInfo(path));
  ExportStatus es = backend_->GetExportStatus(vol.volume_id());
  // Only the volume's own filesystem: freezing whatever else is (or is not)
  // mounted there would stop an unrelated filesystem, perhaps the node's root.
  if (!mounted || es.device_path.empty() || mounted->source != es.device_path) {
    return std::string();
  }
  // Recorded first: if this process dies while the filesystem is frozen, the
  // next one knows to thaw it (RecoverExport).
  VolumeRecord marked = vol;
  marked.set_frozen_for_copy(true);
  RETURN_IF_ERROR(SaveVolume(marked));
  absl::Status s = mounter_->Freeze(path);
  if (!s.ok()) {
    marked.set_frozen_for_copy(false);
    SaveVolume(marked).IgnoreError();
    return absl::FailedPreconditionError(absl::StrCat(
        ctx, ": cannot freeze its filesystem at ", path, " for a consistent copy: ", s.message()));
  }
  LOG(INFO) << ctx << ": filesystem at " << path << " frozen for the copy";
  return path;
}

void VolumeManager::ThawAfterCopy(const std::string& volume_id, const std::string& mount_path) {
  if (mount_path.empty()) return;
  absl::Status s = mounter_->Thaw(mount_path);
  if (s.ok()) {
    LOG(INFO) << "volume " << volume_id << ": filesystem at " << mount_path << " thawed";
    absl::StatusOr<VolumeRecord> rec = GetRecord(volume_id);
    if (rec.ok()) {
      rec->set_frozen_for_copy(false);
      absl::Status saved = SaveVolume(*rec);
      if (!saved.ok()) LOG(WARNING) << "volume " << volume_id << ": clearing frozen_for_copy: " << saved;
    }
  } else {
    LOG(ERROR) << "volume " << volume_id << ": thawing its filesystem at " << mount_path
               << " failed, writers there stay blocked until it is thawed (fsfreeze -u): " << s;
  }
}

absl::StatusOr<csi::v1::CreateSnapshotResponse> VolumeManager::CreateSnapshot(
    const csi::v1::CreateSnapshotRequest& req) {
  if (req.name().empty()) return absl::InvalidArgumentError("name is required");
  RETURN_IF_ERROR(ValidateId(req.source_volume_id(), "source_volume_id"));
  ASSIGN_OR_RETURN(KeyLock name_lock, TryLock("snapname:" + req.name(), "snapshot name " + req.name()));
  std::optional<SnapshotRecord> existing;
  {
    ublk::MutexLock lock(&mu_);
    for (const auto& [_, s] : snapshots_) {
      if (s.name() == req.name()) existing = s;
    }
  }
  auto fill = [](const SnapshotRecord& s, csi::v1::Snapshot* out) {
    out->set_snapshot_id(s.snapshot_id());
    out->set_source_volume_id(s.source_volume_id());
    out->set_size_bytes(s.size_bytes());
    out->mutable_creation_time()->set_seconds(s.created_at());
    out->set_ready_to_use(s.ready_to_use());
  };
  csi::v1::CreateSnapshotResponse resp;
  if (existing) {
    if (existing->source_volume_id() != req.source_volume_id()) {
      return absl::AlreadyExistsError(absl::StrCat("snapshot name ", req.name(), " exists as ",
                                                   existing->snapshot_id(), " of volume ",
                                                   existing->source_volume_id()));
    }
    fill(*existing, resp.mutable_snapshot());
    return resp;
  }
  ASSIGN_OR_RETURN(KeyLock vol_lock, TryLock(req.source_volume_id(), "volume " + req.source_volume_id()));
  ASSIGN_OR_RETURN(VolumeRecord vol, GetRecord(req.source_volume_id()));
  ASSIGN_OR_RETURN(int64_t free_bytes, FreeBytes());
  struct stat st;
  const std::string src = store_->Abs(vol.backing_file());
  if (::stat(src.c_str(), &st) != 0) {
    return absl::FailedPreconditionError(absl::StrCat("volume ", vol.volume_id(), ": backing file ",
                                                      src, ": ", Errno(errno)));
  }
  if (static_cast<int64_t>(st.st_blocks) * 512 > free_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("snapshot of ", vol.volume_id(), " needs ",
                                                     st.st_blocks * 512, " bytes, ", free_bytes,
                                                     " free"));
  }
  SnapshotRecord snap;
  snap.set_snapshot_id(NewId("snap"));
  snap.set_name(req.name());
  snap.set_source_volume_id(vol.volume_id());
  snap.set_size_bytes(vol.capacity_bytes());
  snap.set_created_at(::time(nullptr));
  snap.set_ready_to_use(false);
  snap.set_file(RecordStore::SnapshotFileRel(snap.snapshot_id()));
  RETURN_IF_ERROR(store_->PutSnapshot(snap));
  const std::string dst = store_->Abs(snap.file());
  absl::StatusOr<std::string> frozen = FreezeForCopy(vol, "snapshot " + snap.snapshot_id());
  absl::Status made = frozen.status();
  if (made.ok()) {
    made = CloneFile(src, dst, vol.capacity_bytes());
    ThawAfterCopy(vol.volume_id(), *frozen);
  }
  if (made.ok()) {
    snap.set_ready_to_use(true);
    made = SaveSnapshot(snap);
  }
  if (!made.ok()) {
    Unlink(dst);
    store_->DeleteSnapshot(snap.snapshot_id()).IgnoreError();
    return made;
  }
  LOG(INFO) << "snapshot " << snap.snapshot_id() << " (" << req.name() << ") of volume "
            << vol.volume_id();
  fill(snap, resp.mutable_snapshot());
  return resp;
}

absl::StatusOr<csi::v1::DeleteSnapshotResponse> VolumeManager::DeleteSnapshot(
    const csi::v1::DeleteSnapshotRequest& req) {
  RETURN_IF_ERROR(ValidateId(req.snapshot_id(), "snapshot_id"));
  ASSIGN_OR_RETURN(KeyLock lock, TryLock(req.snapshot_id(), "snapshot " + req.snapshot_id()));
  std::optional<SnapshotRecord> snap = FindSnapshot(req.snapshot_id());
  if (!snap) return csi::v1::DeleteSnapshotResponse();
  const std::string path = store_->Abs(snap->file());
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return absl::InternalError(absl::StrCat("snapshot ", snap->snapshot_id(), ": unlink ", path,
                                            ": ", Errno(errno)));
  }
  RETURN_IF_ERROR(ForgetSnapshot(snap->snapshot_id()));
  LOG(INFO) << "deleted snapshot " << snap->snapshot_id();
  return csi::v1::DeleteSnapshotResponse();
}

absl::StatusOr<csi::v1::ListSnapshotsResponse> VolumeManager::ListSnapshots(
    const csi::v1::ListSnapshotsRequest& req) {
  if (req.max_entries() < 0) return absl::InvalidArgumentError("max_entries must not be negative");
  std::vector<SnapshotRecord> all;
  {
    ublk::MutexLock lock(&mu_);
    for (const auto& [_, s] : snapshots_) {
      if (!req.snapshot_id().empty() && s.snapshot_id() != req.snapshot_id()) continue;
      if (!req.source_volume_id().empty() && s.source_volume_id() != req.source_volume_id()) continue;
      all.push_back(s);
    }
  }
  ASSIGN_OR_RETURN(size_t start,
                   ParseToken(req.starting_token(), all,
                              [](const SnapshotRecord& r) -> const std::string& { return r.snapshot_id(); }));
  size_t end = req.max_entries() == 0 ? all.size()
                                      : std::min(all.size(), start + static_cast<size_t>(req.max_entries()));
  csi::v1::ListSnapshotsResponse resp;
  for (size_t i = start; i < end; ++i) {
    csi::v1::Snapshot* out = resp.add_entries()->mutable_snapshot();
    out->set_snapshot_id(all[i].snapshot_id());
    out->set_source_volume_id(all[i].source_volume_id());
    out->set_size_bytes(all[i].size_bytes());
    out->mutable_creation_time()->set_seconds(all[i].created_at());
    out->set_ready_to_use(all[i].ready_to_use());
  }
  if (end < all.size()) resp.set_next_token(absl::StrCat(kTokenPrefix, all[end - 1].snapshot_id()));
  return resp;
}

}  // namespace ublk_csi
