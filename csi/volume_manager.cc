// VolumeManager: construction, loading, locks, helpers, and the Controller
// half. The Node half is in volume_manager_node.cc.
#include "csi/volume_manager.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <ctime>
#include <limits>
#include <optional>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "csi/log_escape.h"
#include "csi/rbd_params.h"
#include "glog/logging.h"
#include "ublk/mutex.h"
#include "ublk/status_macros.h"

namespace ublk_csi {

using csi::v1::VolumeCapability;
using records::SnapshotRecord;
using records::VolumeRecord;

namespace {

constexpr int64_t kAlign = 4096;
// CSI's general size limits (spec, "Size Limits"): a string field, and the
// keys plus values of a map<string, string>.
constexpr size_t kMaxStringBytes = 128;
constexpr size_t kMaxMapBytes = 4096;
// Beyond it, a pool would promise exabytes per free gigabyte: a typo.
constexpr double kMaxOvercommitRatio = 1000;
// A List* response stops adding entries past this size (and sets
// next_token) even when max_entries allows more: a quarter of the 4 MiB a
// gRPC client accepts by default.
constexpr size_t kMaxListResponseBytes = size_t{1} << 20;
constexpr char kParamFsType[] = "fsType";
constexpr char kParamBlockSize[] = "blockSize";
constexpr char kReservedParamPrefix[] = "csi.storage.k8s.io/";

// v rounded up to a multiple of a (> 0); nullopt if that overflows int64.
std::optional<int64_t> RoundUp(int64_t v, int64_t a) {
  const int64_t rem = v % a;
  if (rem == 0) return v;
  int64_t out = 0;
  if (__builtin_add_overflow(v, a - rem, &out)) return std::nullopt;
  return out;
}

int64_t SaturatingAdd(int64_t a, int64_t b) {
  int64_t out = 0;
  if (__builtin_add_overflow(a, b, &out)) return b > 0 ? INT64_MAX : INT64_MIN;
  return out;
}

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
// range, OUT_OF_RANGE when no aligned size fits it (or it is beyond int64).
// `dflt` (> 0) is used when neither bound is given.
absl::StatusOr<int64_t> SizeFor(const csi::v1::CapacityRange& range, int64_t dflt,
                                absl::string_view field) {
  const int64_t req = range.required_bytes();
  const int64_t lim = range.limit_bytes();
  if (req < 0) return absl::InvalidArgumentError(absl::StrCat(field, ".required_bytes < 0"));
  if (lim < 0) return absl::InvalidArgumentError(absl::StrCat(field, ".limit_bytes < 0"));
  if (lim != 0 && req > lim) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".required_bytes (", req, ") > limit_bytes (", lim, ")"));
  }
  if (req == 0) {
    std::optional<int64_t> d = RoundUp(std::max<int64_t>(dflt, kAlign), kAlign);
    if (!d) d = INT64_MAX / kAlign * kAlign;
    if (lim == 0 || lim >= *d) return *d;
    int64_t s = lim / kAlign * kAlign;
    if (s == 0) {
      return absl::OutOfRangeError(
          absl::StrCat(field, ".limit_bytes ", lim, " is below the minimum size ", kAlign));
    }
    return s;
  }
  std::optional<int64_t> s = RoundUp(req, kAlign);
  if (!s) {
    return absl::OutOfRangeError(absl::StrCat(field, ".required_bytes ", req,
                                              " is beyond the largest volume size (",
                                              INT64_MAX / kAlign * kAlign, " bytes)"));
  }
  if (lim != 0 && *s > lim) {
    return absl::OutOfRangeError(
        absl::StrCat(field, ": no multiple of ", kAlign, " bytes lies in [", req, ", ", lim, "]"));
  }
  return *s;
}

bool FitsRange(int64_t size, const csi::v1::CapacityRange& range) {
  return size >= range.required_bytes() &&
         (range.limit_bytes() == 0 || size <= range.limit_bytes());
}

absl::Status ValidateCapabilities(const google::protobuf::RepeatedPtrField<VolumeCapability>& caps,
                                  absl::string_view field) {
  if (caps.empty()) return absl::InvalidArgumentError(absl::StrCat(field, " is required"));
  for (int i = 0; i < caps.size(); ++i) {
    RETURN_IF_ERROR(ValidateCapability(caps[i], absl::StrCat(field, "[", i, "]")));
  }
  return absl::OkStatus();
}

// Copies src to dst (created, must not exist): a reflink where the
// filesystem shares extents, else a copy of only the data extents so holes
// stay holes. Then sets dst's size to `size` (>= src size) and syncs it.
// The caller removes dst on failure.
absl::Status CloneFile(FileSystem& fs, const std::string& src, const std::string& dst,
                       int64_t size) {
  absl::StatusOr<std::unique_ptr<File>> in = fs.Open(src, FileSystem::OpenMode::kRead);
  if (!in.ok()) {
    return absl::IsNotFound(in.status()) ? in.status() : WriteFailure(in.status());
  }
  ASSIGN_OR_RETURN(struct stat st, (*in)->Stat());
  absl::StatusOr<std::unique_ptr<File>> out_or =
      fs.Open(dst, FileSystem::OpenMode::kCreateExclusive, 0600);
  if (!out_or.ok()) return WriteFailure(out_or.status());
  File& out = **out_or;
  if (absl::Status cloned = out.CloneFrom(**in); !cloned.ok()) {
    if (!absl::IsUnimplemented(cloned)) return WriteFailure(cloned);
    VLOG(1) << cloned.message() << "; sparse copy";
    std::vector<char> buf(1 << 20);
    int64_t data = 0;
    for (;;) {
      absl::StatusOr<int64_t> next = (*in)->NextData(data);
      if (!next.ok()) return WriteFailure(next.status());
      if (*next < 0) break;  // no more data
      data = *next;
      absl::StatusOr<int64_t> hole = (*in)->NextHole(data);
      const int64_t end = hole.ok() ? *hole : st.st_size;
      for (int64_t off = data; off < end;) {
        const size_t want =
            static_cast<size_t>(std::min<int64_t>(end - off, static_cast<int64_t>(buf.size())));
        absl::StatusOr<size_t> n = (*in)->ReadAt(buf.data(), want, off);
        if (!n.ok()) return WriteFailure(n.status());
        if (*n == 0) return absl::InternalError(absl::StrCat("read ", src, ": short read"));
        RETURN_IF_ERROR(WriteFailure(out.WriteAt(buf.data(), *n, off)));
        off += static_cast<int64_t>(*n);
      }
      data = end;
    }
  }
  RETURN_IF_ERROR(WriteFailure(out.Truncate(std::max<int64_t>(size, st.st_size))));
  return WriteFailure(out.Sync());
}

absl::Status CreateSparse(FileSystem& fs, const std::string& path, int64_t size) {
  absl::StatusOr<std::unique_ptr<File>> f =
      fs.Open(path, FileSystem::OpenMode::kCreateExclusive, 0600);
  if (!f.ok()) return WriteFailure(f.status());
  RETURN_IF_ERROR(WriteFailure((*f)->Truncate(size)));
  return WriteFailure((*f)->Sync());
}

void Unlink(FileSystem& fs, const std::string& path) {
  absl::Status s = fs.Unlink(path);
  if (!s.ok() && !absl::IsNotFound(s)) LOG(WARNING) << s.message();
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
    return absl::AbortedError(
        absl::StrCat("starting_token '", EscapeForLog(token), "' is not valid"));
  }
  size_t i = 0;
  while (i < sorted.size() && absl::string_view(id_of(sorted[i])) <= after) ++i;
  return i;
}

}  // namespace

absl::Status ValidatePath(absl::string_view path, absl::string_view field) {
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat(field, " is required"));
  if (path[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " '", EscapeForLog(path, 256), "' is not absolute"));
  }
  if (path.size() > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " is ", path.size(), " bytes, longer than PATH_MAX (4096)"));
  }
  if (path.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(field, " contains a NUL byte"));
  }
  if (path == "/") return absl::InvalidArgumentError(absl::StrCat(field, " must not be /"));
  for (absl::string_view comp : absl::StrSplit(path.substr(1), '/')) {
    if (comp.empty() || comp == "." || comp == "..") {
      return absl::InvalidArgumentError(absl::StrCat(field, " '", EscapeForLog(path, 256),
                                                     "' is not clean (empty, . or .. component)"));
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
        return absl::InvalidArgumentError(absl::StrCat(field, ".mount.fs_type '", EscapeForLog(fs),
                                                       "' is not supported (ext4 or xfs)"));
      }
      // The allow-list that stage and publish apply, already where a
      // capability first arrives (CreateVolume, ValidateVolumeCapabilities):
      // a volume is never created for flags no node could mount it with.
      const auto& mf = cap.mount().mount_flags();
      RETURN_IF_ERROR(ValidateMountFlags(std::vector<std::string>(mf.begin(), mf.end()),
                                         absl::StrCat(field, ".mount.mount_flags")));
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
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".access_mode.mode ", Mode::Mode_Name(cap.access_mode().mode()),
                       " is not supported: ublk volumes are node-local (single-node modes only)"));
  }
}

absl::StatusOr<int64_t> ParseSize(absl::string_view text) {
  absl::string_view s = absl::StripAsciiWhitespace(text);
  static const std::pair<const char*, int64_t> kSuffixes[] = {{"Ki", int64_t{1} << 10},
                                                              {"Mi", int64_t{1} << 20},
                                                              {"Gi", int64_t{1} << 30},
                                                              {"Ti", int64_t{1} << 40},
                                                              {"K", 1000},
                                                              {"k", 1000},
                                                              {"M", 1000000},
                                                              {"G", 1000000000},
                                                              {"T", 1000000000000}};
  int64_t mult = 1;
  for (const auto& [suf, m] : kSuffixes) {
    if (absl::ConsumeSuffix(&s, suf)) {
      mult = m;
      break;
    }
  }
  int64_t v = 0;
  if (s.empty() || !absl::SimpleAtoi(s, &v) || v < 0 || v > INT64_MAX / mult) {
    return absl::InvalidArgumentError(absl::StrCat(
        "size '", EscapeForLog(text), "' is not a size in int64 bytes (e.g. 1Gi, 512Mi, 4096)"));
  }
  return v * mult;
}

namespace {

// Decodes one UTF-8 sequence at s[i]: its code point and length, or
// nullopt if it is not well-formed (overlong, surrogate, > U+10FFFF, cut).
std::optional<std::pair<uint32_t, size_t>> DecodeUtf8(absl::string_view s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<uint8_t>(s[i + k]); };
  const uint8_t c = b(0);
  if (c < 0x80) return std::make_pair(uint32_t{c}, size_t{1});
  size_t len = 0;
  uint32_t cp = 0, min = 0;
  if ((c & 0xe0) == 0xc0) {
    len = 2, cp = c & 0x1f, min = 0x80;
  } else if ((c & 0xf0) == 0xe0) {
    len = 3, cp = c & 0x0f, min = 0x800;
  } else if ((c & 0xf8) == 0xf0) {
    len = 4, cp = c & 0x07, min = 0x10000;
  } else {
    return std::nullopt;
  }
  if (i + len > s.size()) return std::nullopt;
  for (size_t k = 1; k < len; ++k) {
    if ((b(k) & 0xc0) != 0x80) return std::nullopt;
    cp = (cp << 6) | (b(k) & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return std::nullopt;
  return std::make_pair(cp, len);
}

bool BannedInName(uint32_t cp) {
  return cp <= 0x08 || cp == 0x0b || cp == 0x0c || (cp >= 0x0e && cp <= 0x1f) ||
         (cp >= 0x7f && cp <= 0x9f);
}

}  // namespace

absl::Status ValidateName(absl::string_view name, absl::string_view field) {
  if (name.empty()) return absl::InvalidArgumentError(absl::StrCat(field, " is required"));
  if (name.size() > kMaxStringBytes) {
    return absl::InvalidArgumentError(absl::StrCat(field, " '", EscapeForLog(name, 32), "' is ",
                                                   name.size(), " bytes; CSI allows at most ",
                                                   kMaxStringBytes));
  }
  for (size_t i = 0; i < name.size();) {
    std::optional<std::pair<uint32_t, size_t>> cp = DecodeUtf8(name, i);
    if (!cp) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, " '", EscapeForLog(name), "' is not UTF-8 (at byte ", i, ")"));
    }
    if (BannedInName(cp->first)) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, " '", EscapeForLog(name), "' contains the control character ",
          absl::StrFormat("U+%04X", cp->first), " (at byte ", i, "), which CSI bans in names"));
    }
    i += cp->second;
  }
  return absl::OkStatus();
}

absl::Status ValidateMapSize(const google::protobuf::Map<std::string, std::string>& map,
                             absl::string_view field) {
  size_t total = 0;
  for (const auto& [k, v] : map) total += k.size() + v.size();
  if (total > kMaxMapBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, " holds ", total, " bytes of keys and values; CSI allows at most ", kMaxMapBytes));
  }
  return absl::OkStatus();
}

absl::StatusOr<double> ParseOvercommitRatio(absl::string_view text, absl::string_view field) {
  double v = 0;
  if (!absl::SimpleAtod(text, &v) || !std::isfinite(v) || v <= 0 || v > kMaxOvercommitRatio) {
    return absl::InvalidArgumentError(absl::StrCat(field, " '", EscapeForLog(text),
                                                   "' is not a ratio in (0, ", kMaxOvercommitRatio,
                                                   "] (e.g. 1, 2.5)"));
  }
  return v;
}

VolumeManager::VolumeManager(VolumeManagerOptions options, RecordStore* store,
                             VolumeBackend* backend, Mounter* mounter)
    : options_(std::move(options)), store_(store), backend_(backend), mounter_(mounter) {
  if (options_.registry == nullptr) return;
  auto& pool = prometheus::BuildGauge()
                   .Name("ublk_csi_pool_bytes")
                   .Help(
                       "Thin pool of the data dir: provisioned = sum of volume sizes; used = "
                       "bytes allocated by backing and snapshot files; capacity = free + used")
                   .Register(*options_.registry);
  provisioned_gauge_ = &pool.Add({{"kind", "provisioned"}});
  used_gauge_ = &pool.Add({{"kind", "used"}});
  capacity_gauge_ = &pool.Add({{"kind", "capacity"}});
  prometheus::BuildGauge()
      .Name("ublk_csi_pool_overcommit_ratio")
      .Help("--overcommit-ratio: provisioned bytes admitted per byte of pool capacity")
      .Register(*options_.registry)
      .Add({})
      .Set(options_.overcommit_ratio);
  refused_counter_ = &prometheus::BuildCounter()
                          .Name("ublk_csi_pool_exhausted_total")
                          .Help(
                              "CreateVolume/ControllerExpandVolume calls refused "
                              "(RESOURCE_EXHAUSTED) because the thin pool would overflow")
                          .Register(*options_.registry)
                          .Add({});
}

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

// A failed record write may have renamed the new record into place (only
// the dir fsync failed): the record in memory, which the caller keeps, is
// then written back, so that a restart finds what this process serves.
absl::Status VolumeManager::SaveVolume(const VolumeRecord& rec) {
  absl::Status s = store_->PutVolume(rec);
  if (!s.ok()) {
    if (std::optional<VolumeRecord> old = FindVolume(rec.volume_id())) {
      if (absl::Status back = store_->PutVolume(*old); !back.ok()) {
        LOG(WARNING) << "volume " << rec.volume_id() << ": writing back its record: " << back;
      }
    }
    return s;
  }
  ublk::MutexLock lock(&mu_);
  volumes_[rec.volume_id()] = rec;
  return absl::OkStatus();
}

absl::Status VolumeManager::SaveSnapshot(const SnapshotRecord& rec) {
  absl::Status s = store_->PutSnapshot(rec);
  if (!s.ok()) {
    if (std::optional<SnapshotRecord> old = FindSnapshot(rec.snapshot_id())) {
      if (absl::Status back = store_->PutSnapshot(*old); !back.ok()) {
        LOG(WARNING) << "snapshot " << rec.snapshot_id() << ": writing back its record: " << back;
      }
    }
    return s;
  }
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
  absl::StatusOr<int64_t> free = store_->fs().FreeBytes(store_->data_dir());
  if (!free.ok()) return absl::InternalError(free.status().message());
  return *free;
}

int64_t VolumeManager::PoolUsage::capacity() const { return SaturatingAdd(free, used); }

VolumeManager::Reservation::~Reservation() {
  if (m_ == nullptr) return;
  ublk::MutexLock lock(&m_->mu_);
  m_->reserved_bytes_ -= bytes_;
}

double VolumeManager::RatioFor(
    const google::protobuf::Map<std::string, std::string>& params) const {
  auto it = params.find(kParamOvercommitRatio);
  if (it == params.end()) return options_.overcommit_ratio;
  absl::StatusOr<double> r = ParseOvercommitRatio(it->second, kParamOvercommitRatio);
  return r.ok() ? *r : options_.overcommit_ratio;
}

absl::StatusOr<VolumeManager::PoolUsage> VolumeManager::MeasurePool() {
  std::vector<std::string> files;
  PoolUsage u;
  {
    ublk::MutexLock lock(&mu_);
    for (const auto& [_, rec] : volumes_) {
      if (rec.has_rbd()) continue;  // in the Ceph pool, not the data dir
      u.provisioned = SaturatingAdd(u.provisioned, rec.capacity_bytes());
      files.push_back(rec.backing_file());
    }
    for (const auto& [_, snap] : snapshots_) {
      if (!snap.has_rbd()) files.push_back(snap.file());
    }
  }
  for (const std::string& rel : files) {
    if (absl::StatusOr<struct stat> st = store_->fs().Stat(store_->Abs(rel)); st.ok()) {
      u.used = SaturatingAdd(u.used, static_cast<int64_t>(st->st_blocks) * 512);
    }
  }
  ASSIGN_OR_RETURN(u.free, FreeBytes());
  return u;
}

namespace {

// bytes x ratio, saturating at INT64_MAX (never UB for any ratio we accept).
int64_t Scale(int64_t bytes, double ratio) {
  const long double v = static_cast<long double>(bytes) * static_cast<long double>(ratio);
  if (!(v < static_cast<long double>(std::numeric_limits<int64_t>::max()))) return INT64_MAX;
  return v <= 0 ? 0 : static_cast<int64_t>(v);
}

std::string Human(int64_t bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 6) v /= 1024, ++u;
  return absl::StrFormat("%.1f %s", v, kUnits[u]);
}

}  // namespace

absl::StatusOr<VolumeManager::Reservation> VolumeManager::Reserve(int64_t bytes, double ratio,
                                                                  absl::string_view what) {
  ASSIGN_OR_RETURN(PoolUsage u, MeasurePool());
  const int64_t limit = Scale(u.capacity(), ratio);
  std::string refused;
  {
    ublk::MutexLock lock(&mu_);
    int64_t provisioned = 0;
    for (const auto& [_, rec] : volumes_) {
      if (!rec.has_rbd()) provisioned = SaturatingAdd(provisioned, rec.capacity_bytes());
    }
    provisioned = SaturatingAdd(provisioned, reserved_bytes_);
    const int64_t after = SaturatingAdd(provisioned, bytes);
    if (after <= limit && after != INT64_MAX) {
      reserved_bytes_ += bytes;
      if (pool_full_.exchange(false)) {
        LOG(INFO) << "thin pool has room again: " << Human(after) << " provisioned of "
                  << Human(limit) << " (capacity " << Human(u.capacity()) << " x overcommit ratio "
                  << ratio << ")";
      }
      return Reservation(this, bytes);
    }
    refused = absl::StrCat(what, ": thin pool exhausted: ", bytes, " bytes (", Human(bytes),
                           ") requested, ", provisioned, " bytes (", Human(provisioned),
                           ") already provisioned; capacity ", u.capacity(), " bytes (",
                           Human(u.capacity()), ": ", Human(u.free), " free + ", Human(u.used),
                           " used by volumes and snapshots) x overcommit ratio ", ratio, " = ",
                           limit, " bytes (", Human(limit),
                           "). Free space in the data dir, delete volumes, or "
                           "raise --overcommit-ratio (or the StorageClass parameter ",
                           kParamOvercommitRatio, ")");
  }
  if (refused_counter_ != nullptr) refused_counter_->Increment();
  if (!pool_full_.exchange(true)) LOG(WARNING) << refused;
  return absl::ResourceExhaustedError(refused);
}

void VolumeManager::RefreshPoolMetrics() {
  if (provisioned_gauge_ == nullptr) return;
  absl::StatusOr<PoolUsage> u = MeasurePool();
  if (!u.ok()) return;
  provisioned_gauge_->Set(static_cast<double>(u->provisioned));
  used_gauge_->Set(static_cast<double>(u->used));
  capacity_gauge_->Set(static_cast<double>(u->capacity()));
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
  return absl::ResourceExhaustedError(absl::StrCat(
      "accessibility_requirements do not include this node (", kTopologyKey, "=", options_.node_id,
      "); ublk volumes can only be provisioned on the node they are served from"));
}

void VolumeManager::FillVolume(const VolumeRecord& rec, csi::v1::Volume* out) const {
  out->set_volume_id(rec.volume_id());
  out->set_capacity_bytes(rec.capacity_bytes());
  auto& ctx = *out->mutable_volume_context();
  ctx["name"] = rec.name();
  ctx["fsType"] = rec.fs_type();
  ctx["accessType"] = rec.access_type() == VolumeRecord::BLOCK ? "block" : "mount";
  if (rec.has_rbd()) {
    // What a node needs to stage it without a record of its own (the
    // controller Deployment made this one); no secret. No topology: any
    // node can reach the cluster.
    ctx[kParamBackend] = "rbd";
    ctx[kParamClusterID] = rec.rbd().cluster_id();
    ctx[kParamMonitors] = rec.rbd().monitors();
    ctx[kParamPool] = rec.rbd().pool();
    if (!rec.rbd().data_pool().empty()) ctx[kParamDataPool] = rec.rbd().data_pool();
    ctx[kContextImageName] = rec.rbd().image();
    auto bs = rec.parameters().find(kParamBlockSize);
    if (bs != rec.parameters().end()) ctx[kParamBlockSize] = bs->second;
  } else {
    *out->add_accessible_topology() = NodeTopology();
  }
  if (rec.content_source_case() == VolumeRecord::kSourceSnapshotId) {
    out->mutable_content_source()->mutable_snapshot()->set_snapshot_id(rec.source_snapshot_id());
  } else if (rec.content_source_case() == VolumeRecord::kSourceVolumeId) {
    out->mutable_content_source()->mutable_volume()->set_volume_id(rec.source_volume_id());
  }
}

absl::Status VolumeManager::Load() {
  if (!std::isfinite(options_.overcommit_ratio) || options_.overcommit_ratio <= 0 ||
      options_.overcommit_ratio > kMaxOvercommitRatio) {
    return absl::InvalidArgumentError(absl::StrCat("--overcommit-ratio=", options_.overcommit_ratio,
                                                   ": must be in (0, ", kMaxOvercommitRatio, "]"));
  }
  ASSIGN_OR_RETURN(RecordStore::Loaded loaded, store_->LoadAll());
  for (VolumeRecord& rec : loaded.volumes) {
    const std::string id = rec.volume_id();
    if (rec.state() == VolumeRecord::CREATING) {
      // The create never answered; the CO retries it. Roll back.
      LOG(WARNING) << "volume " << id << ": create was interrupted; rolling back";
      Unlink(store_->fs(), store_->Abs(rec.backing_file()));
      RETURN_IF_ERROR(store_->DeleteVolume(id));
      continue;
    }
    if (rec.state() == VolumeRecord::DELETING && rec.has_rbd()) {
      // Removing the image needs the credentials DeleteVolume brings: the
      // CO's retry finishes it (the record keeps answering "being deleted").
      LOG(WARNING) << "volume " << id << ": delete of its RBD image was interrupted; the next "
                   << "DeleteVolume finishes it";
      ublk::MutexLock lock(&mu_);
      volumes_[id] = std::move(rec);
      continue;
    }
    if (rec.state() == VolumeRecord::DELETING) {
      LOG(WARNING) << "volume " << id << ": delete was interrupted; finishing it";
      Unlink(store_->fs(), store_->Abs(rec.backing_file()));
      RETURN_IF_ERROR(store_->DeleteVolume(id));
      continue;
    }
    ublk::MutexLock lock(&mu_);
    volumes_[id] = std::move(rec);
  }
  for (SnapshotRecord& rec : loaded.snapshots) {
    if (!rec.ready_to_use() && rec.has_rbd()) {
      // The RBD snapshot may exist; its name derives from the CSI name, so
      // the CO's retry of CreateSnapshot adopts it.
      LOG(WARNING) << "snapshot " << rec.snapshot_id()
                   << ": creation was interrupted; dropping its record (a retry adopts the RBD "
                   << "snapshot " << rec.rbd_snap() << ")";
      RETURN_IF_ERROR(store_->DeleteSnapshot(rec.snapshot_id()));
      continue;
    }
    if (!rec.ready_to_use()) {
      LOG(WARNING) << "snapshot " << rec.snapshot_id()
                   << ": creation was interrupted; rolling back";
      Unlink(store_->fs(), store_->Abs(rec.file()));
      RETURN_IF_ERROR(store_->DeleteSnapshot(rec.snapshot_id()));
      continue;
    }
    ublk::MutexLock lock(&mu_);
    snapshots_[rec.snapshot_id()] = std::move(rec);
  }
  ublk::MutexLock lock(&mu_);
  LOG(INFO) << "loaded " << volumes_.size() << " volume and " << snapshots_.size()
            << " snapshot records"
            << (loaded.set_aside.empty()
                    ? ""
                    : absl::StrCat("; ", loaded.set_aside.size(), " corrupt records set aside"));
  return absl::OkStatus();
}

struct VolumeManager::ContentSource {
  std::string file;                    // data to start from; "" = an empty volume
  std::optional<KeyLock> lock;         // a source volume, held while copied
  std::optional<VolumeRecord> volume;  // a clone's source, frozen while copied
};

absl::StatusOr<VolumeManager::CreatePlan> VolumeManager::ParseCreateRequest(
    const csi::v1::CreateVolumeRequest& req) const {
  CreatePlan plan;
  RETURN_IF_ERROR(ValidateName(req.name(), "name"));
  plan.name = req.name();
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
  plan.access = block ? VolumeRecord::BLOCK : VolumeRecord::MOUNT;
  RETURN_IF_ERROR(ValidateMapSize(req.parameters(), "parameters"));
  std::string fs_type = "ext4";
  plan.ratio = options_.overcommit_ratio;
  ASSIGN_OR_RETURN(const bool rbd, SelectsRbd(req.parameters(), "parameters"));
  if (rbd) {
    ASSIGN_OR_RETURN(
        plan.rbd, ParseRbdParams(req.parameters(), "parameters", {kParamFsType, kParamBlockSize}));
  }
  for (const auto& [k, v] : req.parameters()) {
    if (absl::StartsWith(k, kReservedParamPrefix)) continue;
    if (rbd && k != kParamFsType && k != kParamBlockSize) continue;  // ParseRbdParams checked them
    if (k == kParamFsType) {
      if (v != "ext4" && v != "xfs") {
        return absl::InvalidArgumentError(absl::StrCat("parameters.fsType '", EscapeForLog(v),
                                                       "' is not supported (ext4 or xfs)"));
      }
      fs_type = v;
    } else if (k == kParamBlockSize) {
      if (v != "512" && v != "4096") {
        return absl::InvalidArgumentError(absl::StrCat("parameters.blockSize '", EscapeForLog(v),
                                                       "' is not supported (512 or 4096)"));
      }
    } else if (k == kParamOvercommitRatio) {
      ASSIGN_OR_RETURN(plan.ratio, ParseOvercommitRatio(v, "parameters.overcommitRatio"));
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "parameters: unknown key '", EscapeForLog(k), "' (known: fsType, blockSize, ",
          kParamOvercommitRatio, ", ", kParamBackend, ")"));
    }
  }
  if (!cap_fs.empty()) {
    if (req.parameters().count(kParamFsType) != 0 && cap_fs != fs_type) {
      return absl::InvalidArgumentError(absl::StrCat("volume_capabilities mount.fs_type ", cap_fs,
                                                     " contradicts parameters.fsType ", fs_type));
    }
    fs_type = cap_fs;
  }
  plan.fs_type = plan.access == VolumeRecord::BLOCK ? "" : fs_type;
  plan.fs_explicit = !cap_fs.empty() || req.parameters().count(kParamFsType) != 0;
  plan.params = UserParams(req.parameters());
  ASSIGN_OR_RETURN(plan.size,
                   SizeFor(req.capacity_range(), options_.default_volume_bytes, "capacity_range"));
  if (req.has_volume_content_source()) {
    const auto& src = req.volume_content_source();
    if (src.has_snapshot()) {
      plan.src_snapshot = src.snapshot().snapshot_id();
      RETURN_IF_ERROR(ValidateId(plan.src_snapshot, "volume_content_source.snapshot.snapshot_id"));
    } else if (src.has_volume()) {
      plan.src_volume = src.volume().volume_id();
      RETURN_IF_ERROR(ValidateId(plan.src_volume, "volume_content_source.volume.volume_id"));
    } else {
      return absl::InvalidArgumentError("volume_content_source has neither snapshot nor volume");
    }
  }
  return plan;
}

absl::StatusOr<std::optional<csi::v1::CreateVolumeResponse>> VolumeManager::FindCreated(
    const CreatePlan& plan, const csi::v1::CreateVolumeRequest& req) {
  std::optional<VolumeRecord> existing;
  {
    ublk::MutexLock lock(&mu_);
    for (const auto& [_, rec] : volumes_) {
      if (rec.name() == plan.name) existing = rec;
    }
  }
  if (!existing) return std::nullopt;
  const std::string name = EscapeForLog(plan.name);
  if (existing->state() != VolumeRecord::READY) {
    return absl::AbortedError(absl::StrCat("volume name '", name, "' (", existing->volume_id(),
                                           ") is being deleted; retry later"));
  }
  std::map<std::string, std::string> old_params(existing->parameters().begin(),
                                                existing->parameters().end());
  // The volume lives on this node: requirements without it do not match it.
  const bool same = FitsRange(existing->capacity_bytes(), req.capacity_range()) &&
                    plan.params == old_params && existing->access_type() == plan.access &&
                    existing->source_snapshot_id() == plan.src_snapshot &&
                    existing->source_volume_id() == plan.src_volume &&
                    (plan.access == VolumeRecord::BLOCK || existing->fs_type() == plan.fs_type ||
                     (!plan.fs_explicit &&
                      existing->content_source_case() != VolumeRecord::CONTENT_SOURCE_NOT_SET)) &&
                    (existing->has_rbd() || !req.has_accessibility_requirements() ||
                     CheckTopology(req.accessibility_requirements()).ok());
  if (!same) {
    return absl::AlreadyExistsError(absl::StrCat(
        "volume name '", name, "' exists as ", existing->volume_id(),
        " with a different size, parameters, capabilities, topology or content source"));
  }
  csi::v1::CreateVolumeResponse resp;
  FillVolume(*existing, resp.mutable_volume());
  return resp;
}

absl::StatusOr<VolumeManager::ContentSource> VolumeManager::ResolveContentSource(CreatePlan& plan) {
  ContentSource out;
  // The source's data must be usable as what is asked for: a mount volume
  // from a raw block volume would be formatted over on its first stage, and
  // a filesystem of another type never mounts (CSI: INVALID_ARGUMENT).
  auto compatible = [&plan](const VolumeRecord& src, absl::string_view what) -> absl::Status {
    if (plan.access == VolumeRecord::MOUNT && !plan.fs_explicit && src.filesystem_created() &&
        !src.fs_type().empty()) {
      plan.fs_type = src.fs_type();
    }
    if (plan.access == VolumeRecord::MOUNT && src.access_type() == VolumeRecord::BLOCK) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, " holds a raw block volume; it can only be restored as a block volume"));
    }
    if (plan.access == VolumeRecord::MOUNT && src.filesystem_created() &&
        src.fs_type() != plan.fs_type) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " holds a ", src.fs_type(), " filesystem, not ", plan.fs_type));
    }
    return absl::OkStatus();
  };
  if (!plan.src_snapshot.empty()) {
    std::optional<SnapshotRecord> snap = FindSnapshot(plan.src_snapshot);
    if (!snap && !ParseRbdSnapshotId(plan.src_snapshot)) {
      return absl::NotFoundError(absl::StrCat("snapshot ", plan.src_snapshot, " does not exist"));
    }
    if (!snap || snap->has_rbd()) {
      return absl::InvalidArgumentError(
          absl::StrCat("snapshot ", plan.src_snapshot,
                       " is of an RBD volume; restore it with a StorageClass of backend rbd"));
    }
    if (plan.size < snap->size_bytes()) {
      return absl::OutOfRangeError(absl::StrCat("capacity ", plan.size,
                                                " is smaller than snapshot ", plan.src_snapshot,
                                                " (", snap->size_bytes(), " bytes)"));
    }
    // The snapshot's volume, if it still exists, says what the data is.
    if (std::optional<VolumeRecord> vol = FindVolume(snap->source_volume_id())) {
      RETURN_IF_ERROR(compatible(*vol, absl::StrCat("snapshot ", plan.src_snapshot)));
    }
    out.file = store_->Abs(snap->file());
  } else if (!plan.src_volume.empty()) {
    ASSIGN_OR_RETURN(KeyLock l, TryLock(plan.src_volume, "source volume " + plan.src_volume));
    out.lock.emplace(std::move(l));
    std::optional<VolumeRecord> vol = FindVolume(plan.src_volume);
    if (!vol) {
      return absl::NotFoundError(
          absl::StrCat("source volume ", plan.src_volume, " does not exist"));
    }
    if (vol->has_rbd()) {
      return absl::InvalidArgumentError(
          absl::StrCat("source volume ", plan.src_volume,
                       " is an RBD volume; clone it with a StorageClass of backend rbd"));
    }
    if (plan.size < vol->capacity_bytes()) {
      return absl::OutOfRangeError(absl::StrCat("capacity ", plan.size, " is smaller than volume ",
                                                plan.src_volume, " (", vol->capacity_bytes(),
                                                " bytes)"));
    }
    RETURN_IF_ERROR(compatible(*vol, absl::StrCat("source volume ", plan.src_volume)));
    out.file = store_->Abs(vol->backing_file());
    out.volume = std::move(vol);
  }
  if (!out.file.empty()) {
    // A copy takes real space (the source's allocated extents), whatever
    // the overcommit ratio.
    absl::StatusOr<struct stat> st = store_->fs().Stat(out.file);
    if (!st.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("content source file: ", st.status().message()));
    }
    ASSIGN_OR_RETURN(int64_t free_bytes, FreeBytes());
    const int64_t need = static_cast<int64_t>(st->st_blocks) * 512;
    if (need > free_bytes) {
      return absl::ResourceExhaustedError(
          absl::StrCat("volume '", EscapeForLog(plan.name), "': copying its content source needs ",
                       need, " bytes, the data dir has ", free_bytes, " free"));
    }
  }
  return out;
}

absl::StatusOr<VolumeRecord> VolumeManager::MaterializeVolume(const CreatePlan& plan,
                                                              ContentSource& source) {
  VolumeRecord rec;
  rec.set_volume_id(NewId("vol"));
  rec.set_name(plan.name);
  rec.set_state(VolumeRecord::CREATING);
  rec.set_created_at(::time(nullptr));
  rec.set_capacity_bytes(plan.size);
  for (const auto& [k, v] : plan.params) (*rec.mutable_parameters())[k] = v;
  rec.set_access_type(plan.access);
  rec.set_fs_type(plan.fs_type);
  if (!plan.src_snapshot.empty()) rec.set_source_snapshot_id(plan.src_snapshot);
  if (!plan.src_volume.empty()) rec.set_source_volume_id(plan.src_volume);
  rec.set_backing_file(RecordStore::VolumeFileRel(rec.volume_id()));
  rec.set_dev_id(-1);
  // A restored volume brings its filesystem with it.
  rec.set_filesystem_created(false);
  ASSIGN_OR_RETURN(KeyLock vol_lock, TryLock(rec.volume_id(), "volume " + rec.volume_id()));
  // The record goes first: after a crash it says which file to roll back.
  const std::string path = store_->Abs(rec.backing_file());
  absl::Status made = store_->PutVolume(rec);
  if (made.ok() && source.file.empty()) {
    made = CreateSparse(store_->fs(), path, plan.size);
  } else if (made.ok()) {
    absl::StatusOr<std::string> frozen =
        source.volume ? FreezeForCopy(*source.volume, "clone " + rec.volume_id()) : std::string();
    made = frozen.status();
    if (made.ok()) {
      made = CloneFile(store_->fs(), source.file, path, plan.size);
      if (source.volume) ThawAfterCopy(source.volume->volume_id(), *frozen);
    }
  }
  if (made.ok()) {
    rec.set_state(VolumeRecord::READY);
    made = SaveVolume(rec);
  }
  if (!made.ok()) {
    // Record first: a crash in between leaves an unlisted file, never a
    // record whose file is gone. (A failed write may still have renamed
    // its record into place: only its dir fsync failed.)
    if (absl::Status s = store_->DeleteVolume(rec.volume_id()); !s.ok()) {
      LOG(WARNING) << "volume " << rec.volume_id() << ": rolling back its record: " << s
                   << " (the next start rolls it back)";
    }
    Unlink(store_->fs(), path);
    return made;
  }
  return rec;
}

absl::StatusOr<csi::v1::CreateVolumeResponse> VolumeManager::CreateVolume(
    const csi::v1::CreateVolumeRequest& req) {
  ASSIGN_OR_RETURN(CreatePlan plan, ParseCreateRequest(req));
  const std::string name = EscapeForLog(plan.name);
  ASSIGN_OR_RETURN(KeyLock name_lock, TryLock("name:" + plan.name, "volume name '" + name + "'"));
  ASSIGN_OR_RETURN(std::optional<csi::v1::CreateVolumeResponse> done, FindCreated(plan, req));
  if (done) return *std::move(done);
  // RBD images live in the cluster, reachable from every node: no topology.
  if (plan.rbd) return CreateRbdVolume(plan, req);
  if (req.has_accessibility_requirements()) {
    RETURN_IF_ERROR(CheckTopology(req.accessibility_requirements()));
  }
  ASSIGN_OR_RETURN(ContentSource source, ResolveContentSource(plan));
  ASSIGN_OR_RETURN(Reservation room,
                   Reserve(plan.size, plan.ratio, absl::StrCat("volume '", name, "'")));
  ASSIGN_OR_RETURN(VolumeRecord rec, MaterializeVolume(plan, source));
  LOG(INFO) << "created volume " << rec.volume_id() << " ('" << name << "', " << plan.size
            << " bytes" << (source.file.empty() ? "" : ", from " + source.file) << ")";
  csi::v1::CreateVolumeResponse resp;
  FillVolume(rec, resp.mutable_volume());
  return resp;
}

absl::StatusOr<csi::v1::DeleteVolumeResponse> VolumeManager::DeleteVolume(
    const csi::v1::DeleteVolumeRequest& req) {
  RETURN_IF_ERROR(ValidateId(req.volume_id(), "volume_id"));
  ASSIGN_OR_RETURN(KeyLock lock, TryLock(req.volume_id(), "volume " + req.volume_id()));
  std::optional<VolumeRecord> rec = FindVolume(req.volume_id());
  if (!rec) {
    if (std::optional<ParsedRbdVolumeId> id = ParseRbdVolumeId(req.volume_id())) {
      return DeleteRbdVolumeWithoutRecord(req, *id);
    }
    return csi::v1::DeleteVolumeResponse();  // already gone: success
  }
  std::optional<RbdCredentials> rbd_creds;
  if (rec->has_rbd()) {
    ASSIGN_OR_RETURN(RbdCredentials c, ParseRbdSecrets(req.secrets(), "secrets"));
    rbd_creds = std::move(c);
  }
  if (!rec->staged_path().empty() || rec->published_paths_size() > 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "volume ", req.volume_id(), " is in use (staged at '", rec->staged_path(), "', ",
        rec->published_paths_size(), " publications); unpublish and unstage it first"));
  }
  // A mount the records do not know of (made by hand, or leaked) still
  // reads the device: removing it would hand its number, and so that
  // mount, to the next volume.
  ASSIGN_OR_RETURN(
      std::vector<MountInfo> mounted,
      MountsOfDevice(*mounter_, backend_->GetExportStatus(req.volume_id()).device_path));
  if (!mounted.empty()) {
    std::vector<std::string> where;
    for (const MountInfo& m : mounted) where.push_back(m.target);
    return absl::FailedPreconditionError(
        absl::StrCat("volume ", req.volume_id(), ": its device is still mounted at ",
                     absl::StrJoin(where, ", "), "; unmount it before deleting the volume"));
  }
  rec->set_state(VolumeRecord::DELETING);
  RETURN_IF_ERROR(SaveVolume(*rec));
  RETURN_IF_ERROR(backend_->RemoveExport(rec->volume_id()));
  if (rbd_creds) {
    RETURN_IF_ERROR(DeleteRbdImage(*rec, *rbd_creds));
    RETURN_IF_ERROR(ForgetVolume(rec->volume_id()));
    LOG(INFO) << "deleted volume " << rec->volume_id() << " (" << EscapeForLog(rec->name())
              << "): RBD image " << rec->rbd().pool() << "/" << rec->rbd().image() << " trashed";
    return csi::v1::DeleteVolumeResponse();
  }
  const std::string path = store_->Abs(rec->backing_file());
  if (absl::Status s = store_->fs().Unlink(path); !s.ok() && !absl::IsNotFound(s)) {
    return absl::InternalError(absl::StrCat("volume ", rec->volume_id(), ": ", s.message()));
  }
  RETURN_IF_ERROR(ForgetVolume(rec->volume_id()));
  LOG(INFO) << "deleted volume " << rec->volume_id() << " (" << rec->name() << ")";
  return csi::v1::DeleteVolumeResponse();
}

absl::StatusOr<csi::v1::ValidateVolumeCapabilitiesResponse>
VolumeManager::ValidateVolumeCapabilities(const csi::v1::ValidateVolumeCapabilitiesRequest& req,
                                          Driver driver) {
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
  RETURN_IF_ERROR(CheckDriverVolume(driver, req.volume_id(), "volume_id"));
  ASSIGN_OR_RETURN(VolumeRecord rec, GetRecord(req.volume_id()));
  csi::v1::ValidateVolumeCapabilitiesResponse resp;
  for (int i = 0; i < req.volume_capabilities_size(); ++i) {
    const VolumeCapability& cap = req.volume_capabilities(i);
    absl::Status s = ValidateCapability(cap, absl::StrCat("volume_capabilities[", i, "]"));
    if (s.ok() && cap.has_block() != (rec.access_type() == VolumeRecord::BLOCK)) {
      s = absl::InvalidArgumentError(
          absl::StrCat("volume_capabilities[", i, "]: volume is a ",
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
      resp.set_message(absl::StrCat("parameter ", EscapeForLog(k), "=", EscapeForLog(v),
                                    " does not match the volume"));
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
  ASSIGN_OR_RETURN(size_t start, ParseToken(req.starting_token(), all,
                                            [](const VolumeRecord& r) -> const std::string& {
                                              return r.volume_id();
                                            }));
  size_t end = req.max_entries() == 0
                   ? all.size()
                   : std::min(all.size(), start + static_cast<size_t>(req.max_entries()));
  csi::v1::ListVolumesResponse resp;
  size_t bytes = 0;
  for (size_t i = start; i < end; ++i) {
    if (i > start && bytes >= kMaxListResponseBytes) {
      end = i;  // the rest on the next page, whatever max_entries says
      break;
    }
    auto* entry = resp.add_entries();
    FillVolume(all[i], entry->mutable_volume());
    // VOLUME_CONDITION: the export's live state, "key=value ..." so that
    // `ublk-csi-ctl status` and humans can both read it.
    ExportStatus es = backend_->GetExportStatus(all[i].volume_id());
    auto* cond = entry->mutable_status()->mutable_volume_condition();
    const bool staged = !all[i].staged_path().empty();
    cond->set_abnormal(es.state == ExportState::kFailed || es.state == ExportState::kDegraded ||
                       (staged && es.state != ExportState::kLive));
    cond->set_message(absl::StrCat(
        "state=", ExportStateName(es.state),
        " device=", es.device_path.empty() ? "-" : es.device_path, " worker=", es.worker,
        " copy_mode=", es.copy_mode.empty() ? "-" : es.copy_mode, " staged=", staged ? "yes" : "no",
        es.message.empty() ? "" : " message=", es.message));
    bytes += entry->ByteSizeLong();
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
  RETURN_IF_ERROR(ValidateMapSize(req.parameters(), "parameters"));
  ASSIGN_OR_RETURN(const bool rbd, SelectsRbd(req.parameters(), "parameters"));
  if (rbd) {
    // RBD capacity is the Ceph pool's, shared by all nodes, and reading it
    // needs credentials GetCapacity does not carry: not tracked. The chart's
    // controller provisioner runs without capacity tracking for it, so
    // nothing schedules by this answer: 0, no maximum.
    RETURN_IF_ERROR(
        ParseRbdParams(req.parameters(), "parameters", {kParamFsType, kParamBlockSize}).status());
    return csi::v1::GetCapacityResponse();
  }
  double ratio = options_.overcommit_ratio;
  for (const auto& [k, v] : req.parameters()) {
    if (k == kParamOvercommitRatio) {
      ASSIGN_OR_RETURN(ratio, ParseOvercommitRatio(v, "parameters.overcommitRatio"));
    } else if (!absl::StartsWith(k, kReservedParamPrefix) && k != kParamFsType &&
               k != kParamBlockSize) {
      return absl::InvalidArgumentError(
          absl::StrCat("parameters: unknown key '", EscapeForLog(k), "'"));
    }
  }
  csi::v1::GetCapacityResponse resp;
  if (req.has_accessible_topology()) {
    for (const auto& [k, v] : req.accessible_topology().segments()) {
      if (k != kTopologyKey || v != options_.node_id) return resp;  // not here: 0
    }
  }
  // What CreateVolume would admit now: the same rule as Reserve.
  ASSIGN_OR_RETURN(PoolUsage u, MeasurePool());
  int64_t provisioned = u.provisioned;
  {
    ublk::MutexLock lock(&mu_);
    provisioned = SaturatingAdd(provisioned, reserved_bytes_);
  }
  const int64_t limit = Scale(u.capacity(), ratio);
  const int64_t available = limit > provisioned ? (limit - provisioned) / kAlign * kAlign : 0;
  resp.set_available_capacity(available);
  resp.mutable_maximum_volume_size()->set_value(available);
  resp.mutable_minimum_volume_size()->set_value(kAlign);
  return resp;
}

absl::StatusOr<csi::v1::ControllerExpandVolumeResponse> VolumeManager::ControllerExpandVolume(
    const csi::v1::ControllerExpandVolumeRequest& req, Driver driver) {
  RETURN_IF_ERROR(ValidateId(req.volume_id(), "volume_id"));
  if (!req.has_capacity_range()) return absl::InvalidArgumentError("capacity_range is required");
  if (req.has_volume_capability()) {
    RETURN_IF_ERROR(ValidateCapability(req.volume_capability(), "volume_capability"));
  }
  ASSIGN_OR_RETURN(int64_t size, SizeFor(req.capacity_range(), kAlign, "capacity_range"));
  if (req.capacity_range().required_bytes() == 0) {
    return absl::InvalidArgumentError("capacity_range.required_bytes is required");
  }
  RETURN_IF_ERROR(CheckDriverVolume(driver, req.volume_id(), "volume_id"));
  ASSIGN_OR_RETURN(KeyLock lock, TryLock(req.volume_id(), "volume " + req.volume_id()));
  ASSIGN_OR_RETURN(VolumeRecord rec, ControllerRecord(req.volume_id(), req.secrets()));
  if (req.has_volume_capability() && rec.access_type() != VolumeRecord::ACCESS_TYPE_UNSPECIFIED &&
      req.volume_capability().has_block() != (rec.access_type() == VolumeRecord::BLOCK)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "volume_capability asks for ", req.volume_capability().has_block() ? "block" : "mount",
        " access; volume ", rec.volume_id(), " is a ",
        rec.access_type() == VolumeRecord::BLOCK ? "block" : "mount", " volume"));
  }
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
  if (rec.has_rbd()) return ExpandRbdVolume(std::move(rec), size, req);
  if (!options_.online_expansion &&
      (!rec.staged_path().empty() || rec.published_paths_size() > 0)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "volume ", rec.volume_id(),
        " is in use (staged or published) and this node's ublk "
        "driver cannot grow a live device (OFFLINE expansion only); unpublish and unstage it "
        "first"));
  }
  ASSIGN_OR_RETURN(Reservation room,
                   Reserve(size - rec.capacity_bytes(), RatioFor(rec.parameters()),
                           absl::StrCat("volume ", rec.volume_id())));
  const std::string path = store_->Abs(rec.backing_file());
  {
    absl::StatusOr<std::unique_ptr<File>> f = store_->fs().Open(path, FileSystem::OpenMode::kWrite);
    if (absl::IsNotFound(f.status())) {
      return absl::FailedPreconditionError(
          absl::StrCat("volume ", rec.volume_id(), ": backing file: ", f.status().message()));
    }
    if (!f.ok()) return WriteFailure(f.status());
    RETURN_IF_ERROR(WriteFailure((*f)->Truncate(size)));
    // Report only a size the file has reached.
    absl::StatusOr<struct stat> st = (*f)->Stat();
    if (!st.ok() || st->st_size < size) {
      return absl::InternalError(absl::StrCat("volume ", rec.volume_id(), ": ", path,
                                              " did not grow to ", size, " bytes"));
    }
    RETURN_IF_ERROR(WriteFailure((*f)->Sync()));
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
      if (!saved.ok())
        LOG(WARNING) << "volume " << volume_id << ": clearing frozen_for_copy: " << saved;
    }
  } else {
    LOG(ERROR) << "volume " << volume_id << ": thawing its filesystem at " << mount_path
               << " failed, writers there stay blocked until it is thawed (fsfreeze -u): " << s;
  }
}

absl::StatusOr<csi::v1::CreateSnapshotResponse> VolumeManager::CreateSnapshot(
    const csi::v1::CreateSnapshotRequest& req, Driver driver) {
  RETURN_IF_ERROR(ValidateName(req.name(), "name"));
  RETURN_IF_ERROR(ValidateId(req.source_volume_id(), "source_volume_id"));
  RETURN_IF_ERROR(ValidateMapSize(req.parameters(), "parameters"));
  const std::string name = EscapeForLog(req.name());
  RETURN_IF_ERROR(CheckDriverVolume(driver, req.source_volume_id(), "source_volume_id"));
  ASSIGN_OR_RETURN(KeyLock name_lock,
                   TryLock("snapname:" + req.name(), "snapshot name '" + name + "'"));
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
      return absl::AlreadyExistsError(absl::StrCat("snapshot name '", name, "' exists as ",
                                                   existing->snapshot_id(), " of volume ",
                                                   existing->source_volume_id()));
    }
    fill(*existing, resp.mutable_snapshot());
    return resp;
  }
  ASSIGN_OR_RETURN(KeyLock vol_lock,
                   TryLock(req.source_volume_id(), "volume " + req.source_volume_id()));
  ASSIGN_OR_RETURN(VolumeRecord vol, ControllerRecord(req.source_volume_id(), req.secrets()));
  if (vol.has_rbd()) return CreateRbdSnapshot(vol, req);
  ASSIGN_OR_RETURN(int64_t free_bytes, FreeBytes());
  const std::string src = store_->Abs(vol.backing_file());
  absl::StatusOr<struct stat> st = store_->fs().Stat(src);
  if (!st.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("volume ", vol.volume_id(), ": backing file: ", st.status().message()));
  }
  if (static_cast<int64_t>(st->st_blocks) * 512 > free_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("snapshot of ", vol.volume_id(), " needs ",
                                                     st->st_blocks * 512, " bytes, ", free_bytes,
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
  const std::string dst = store_->Abs(snap.file());
  absl::Status made = store_->PutSnapshot(snap);
  if (made.ok()) {
    absl::StatusOr<std::string> frozen = FreezeForCopy(vol, "snapshot " + snap.snapshot_id());
    made = frozen.status();
    if (made.ok()) {
      made = CloneFile(store_->fs(), src, dst, vol.capacity_bytes());
      ThawAfterCopy(vol.volume_id(), *frozen);
    }
  }
  if (made.ok()) {
    snap.set_ready_to_use(true);
    made = SaveSnapshot(snap);
  }
  if (!made.ok()) {
    if (absl::Status s = store_->DeleteSnapshot(snap.snapshot_id()); !s.ok()) {
      LOG(WARNING) << "snapshot " << snap.snapshot_id() << ": rolling back its record: " << s
                   << " (the next start rolls it back)";
    }
    Unlink(store_->fs(), dst);
    return made;
  }
  LOG(INFO) << "snapshot " << snap.snapshot_id() << " ('" << name << "') of volume "
            << vol.volume_id();
  fill(snap, resp.mutable_snapshot());
  return resp;
}

absl::StatusOr<csi::v1::DeleteSnapshotResponse> VolumeManager::DeleteSnapshot(
    const csi::v1::DeleteSnapshotRequest& req) {
  RETURN_IF_ERROR(ValidateId(req.snapshot_id(), "snapshot_id"));
  ASSIGN_OR_RETURN(KeyLock lock, TryLock(req.snapshot_id(), "snapshot " + req.snapshot_id()));
  std::optional<SnapshotRecord> snap = FindSnapshot(req.snapshot_id());
  if (!snap) {
    std::optional<ParsedRbdSnapshotId> id = ParseRbdSnapshotId(req.snapshot_id());
    if (id && options_.rbd_admin != nullptr) return DeleteRbdSnapshotWithoutRecord(req, *id);
    return csi::v1::DeleteSnapshotResponse();  // already gone: success
  }
  if (snap->has_rbd()) {
    RETURN_IF_ERROR(DeleteRbdSnapshot(*snap, req));
    RETURN_IF_ERROR(ForgetSnapshot(snap->snapshot_id()));
    LOG(INFO) << "deleted snapshot " << snap->snapshot_id() << " (RBD " << snap->rbd().pool() << "/"
              << snap->rbd().image() << "@" << snap->rbd_snap() << ")";
    return csi::v1::DeleteSnapshotResponse();
  }
  const std::string path = store_->Abs(snap->file());
  if (absl::Status s = store_->fs().Unlink(path); !s.ok() && !absl::IsNotFound(s)) {
    return absl::InternalError(absl::StrCat("snapshot ", snap->snapshot_id(), ": ", s.message()));
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
      if (!req.source_volume_id().empty() && s.source_volume_id() != req.source_volume_id())
        continue;
      all.push_back(s);
    }
  }
  ASSIGN_OR_RETURN(size_t start, ParseToken(req.starting_token(), all,
                                            [](const SnapshotRecord& r) -> const std::string& {
                                              return r.snapshot_id();
                                            }));
  size_t end = req.max_entries() == 0
                   ? all.size()
                   : std::min(all.size(), start + static_cast<size_t>(req.max_entries()));
  csi::v1::ListSnapshotsResponse resp;
  size_t bytes = 0;
  for (size_t i = start; i < end; ++i) {
    if (i > start && bytes >= kMaxListResponseBytes) {
      end = i;
      break;
    }
    csi::v1::Snapshot* out = resp.add_entries()->mutable_snapshot();
    out->set_snapshot_id(all[i].snapshot_id());
    out->set_source_volume_id(all[i].source_volume_id());
    out->set_size_bytes(all[i].size_bytes());
    out->mutable_creation_time()->set_seconds(all[i].created_at());
    out->set_ready_to_use(all[i].ready_to_use());
    bytes += out->ByteSizeLong();
  }
  if (end < all.size()) resp.set_next_token(absl::StrCat(kTokenPrefix, all[end - 1].snapshot_id()));
  return resp;
}

}  // namespace ublk_csi
