#include "csi/record_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <ctime>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "glog/logging.h"
#include "prometheus/counter.h"
#include "prometheus/registry.h"
#include "ublk/errno.h"
#include "ublk/status_macros.h"

namespace ublk_csi {
namespace {

constexpr char kVolumeSuffix[] = ".volume";
constexpr char kSnapshotSuffix[] = ".snapshot";
constexpr char kCredentialsSuffix[] = ".cred";
constexpr char kTempSuffix[] = ".tmp";
constexpr uint32_t kSchemaVersion = 1;

using ublk::Errno;

// A node path as a record may hold it: absolute, no empty/"."/".." parts.
bool CleanAbsolute(absl::string_view p) {
  if (p.size() < 2 || p[0] != '/' || p.back() == '/' || p.size() > 4096) return false;
  for (absl::string_view part : absl::StrSplit(p.substr(1), '/')) {
    if (part.empty() || part == "." || part == "..") return false;
  }
  return p.find('\0') == absl::string_view::npos;
}

std::string Shown(absl::string_view p) {
  return absl::CHexEscape(p.size() > 256 ? p.substr(0, 256) : p);
}

absl::Status CheckNotWorldWritable(const std::string& dir) {
  struct stat st;
  if (::lstat(dir.c_str(), &st) != 0) {
    return absl::FailedPreconditionError(absl::StrCat("stat ", dir, ": ", Errno(errno)));
  }
  if (S_ISLNK(st.st_mode)) {
    // The data dir as given may be reached through a symlink (main resolves
    // it); its subdirs must not be.
    return absl::FailedPreconditionError(absl::StrCat(dir, " is a symbolic link"));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(dir, " is not a directory"));
  }
  if ((st.st_mode & S_IWOTH) != 0) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "data dir %s is world-writable (mode %04o): anyone on the node could plant records or "
        "backing files; chmod o-w it (the plugin creates it 0700)",
        dir, st.st_mode & 07777));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status RecordStore::CheckVolumePaths(const records::VolumeRecord& rec) const {
  auto inside = [this](absl::string_view field, const std::string& rel) -> absl::Status {
    if (rel.empty()) return absl::InvalidArgumentError(absl::StrCat(field, " is empty"));
    if (rel[0] == '/' || !CleanAbsolute("/" + rel)) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, " '", Shown(rel), "' is not a clean path inside the data dir"));
    }
    // Walk it from the data dir without following anything.
    std::string at = data_dir_;
    for (absl::string_view part : absl::StrSplit(rel, '/')) {
      absl::StrAppend(&at, "/", part);
      struct stat st;
      if (::lstat(at.c_str(), &st) != 0) break;  // a missing tail is inside
      if (S_ISLNK(st.st_mode)) {
        return absl::InvalidArgumentError(absl::StrCat(
            field, " '", Shown(rel), "' leads through the symlink ", at, " (out of the data dir)"));
      }
    }
    return absl::OkStatus();
  };
  if (rec.has_rbd()) {
    // An RBD image, not a file: pool and image go to librbd only, never
    // into a path; both must be there.
    if (!rec.backing_file().empty()) {
      return absl::InvalidArgumentError("backing_file is set on an rbd volume");
    }
    if (rec.rbd().pool().empty() || rec.rbd().image().empty() || rec.rbd().monitors().empty()) {
      return absl::InvalidArgumentError("rbd: monitors, pool or image is empty");
    }
  } else if (absl::Status s = inside("backing_file", rec.backing_file()); !s.ok()) {
    return s;
  }
  auto node = [](absl::string_view field, const std::string& p) -> absl::Status {
    if (!CleanAbsolute(p)) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, " '", Shown(p), "' is not an absolute clean path"));
    }
    return absl::OkStatus();
  };
  if (!rec.staged_path().empty()) {
    if (absl::Status s = node("staged_path", rec.staged_path()); !s.ok()) return s;
  }
  for (const std::string& p : rec.published_paths()) {
    if (absl::Status s = node("published_paths", p); !s.ok()) return s;
  }
  for (const std::string& p : rec.created_paths()) {
    if (absl::Status s = node("created_paths", p); !s.ok()) return s;
    const bool listed = p == rec.staged_path() ||
                        std::find(rec.published_paths().begin(), rec.published_paths().end(), p) !=
                            rec.published_paths().end();
    if (!listed) {
      return absl::InvalidArgumentError(absl::StrCat(
          "created_paths '", Shown(p), "' is neither the staged path nor a published path"));
    }
  }
  return absl::OkStatus();
}

absl::Status RecordStore::CheckSnapshotPaths(const records::SnapshotRecord& rec) const {
  records::VolumeRecord as_volume;  // reuse the data-dir walk
  if (rec.has_rbd()) {
    if (!rec.file().empty() || rec.rbd_snap().empty()) {
      return absl::InvalidArgumentError("rbd snapshot: file set or rbd_snap empty");
    }
    *as_volume.mutable_rbd() = rec.rbd();
  }
  as_volume.set_backing_file(rec.file());
  absl::Status s = CheckVolumePaths(as_volume);
  if (s.ok()) return s;
  return absl::InvalidArgumentError(
      absl::StrCat("file", absl::StripPrefix(s.message(), "backing_file")));
}

absl::Status ValidateId(absl::string_view id, absl::string_view field) {
  if (id.empty()) return absl::InvalidArgumentError(absl::StrCat(field, " is required"));
  if (id.size() > 128) {
    return absl::InvalidArgumentError(absl::StrCat(field, " longer than 128 characters"));
  }
  if (id[0] == '.') {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " '", absl::CHexEscape(id), "' starts with '.'"));
  }
  for (char c : id) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.';
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(field, " '", absl::CHexEscape(id),
                                                     "' has a character outside [A-Za-z0-9_.-]"));
    }
  }
  return absl::OkStatus();
}

std::string RecordStore::VolumeFileRel(const std::string& volume_id) {
  return absl::StrCat("volumes/", volume_id, ".img");
}

std::string RecordStore::SnapshotFileRel(const std::string& snapshot_id) {
  return absl::StrCat("snapshots/", snapshot_id, ".img");
}

absl::StatusOr<std::unique_ptr<RecordStore>> RecordStore::Open(const std::string& data_dir,
                                                               prometheus::Registry* registry,
                                                               FileSystem* fs_or_null) {
  FileSystem& fs = fs_or_null != nullptr ? *fs_or_null : DefaultFileSystem();
  for (const char* sub :
       {"", "/records", "/records/corrupt", "/volumes", "/snapshots", "/credentials"}) {
    if (absl::Status s = fs.MakeDir(data_dir + sub, 0700); !s.ok() && !absl::IsAlreadyExists(s)) {
      return absl::FailedPreconditionError(s.message());
    }
    // The data dir itself may be given through a symlink; nothing below it.
    std::string dir = data_dir + sub;
    if (*sub == '\0') {
      char buf[PATH_MAX];
      if (::realpath(data_dir.c_str(), buf) != nullptr) dir = buf;
    }
    if (absl::Status s = CheckNotWorldWritable(dir); !s.ok()) return s;
  }
  prometheus::Counter* counter = nullptr;
  if (registry != nullptr) {
    counter = &prometheus::BuildCounter()
                   .Name("ublk_csi_corrupt_records_total")
                   .Help("Record files that could not be read and were moved to records/corrupt")
                   .Register(*registry)
                   .Add({});
  }
  std::unique_ptr<RecordStore> store(new RecordStore(data_dir, counter, fs));
  // A crash between writing a temp file and renaming it leaves the temp file;
  // the record it was replacing is intact, so the temp file is just dropped.
  absl::StatusOr<std::vector<std::string>> names = fs.ListDir(store->records_dir());
  if (!names.ok()) return absl::InternalError(names.status().message());
  for (const std::string& name : *names) {
    if (absl::EndsWith(name, kTempSuffix)) {
      std::string path = store->records_dir() + "/" + name;
      LOG(INFO) << "removing leftover temp record " << path;
      fs.Unlink(path).IgnoreError();
    }
  }
  return store;
}

absl::Status RecordStore::WriteAtomically(const std::string& name, const std::string& bytes) {
  return WriteAtomicallyIn(records_dir(), name, bytes);
}

absl::Status RecordStore::WriteAtomicallyIn(const std::string& dir, const std::string& name,
                                            const std::string& bytes) {
  const std::string final_path = dir + "/" + name;
  const std::string tmp_path = absl::StrCat(dir, "/.", name, kTempSuffix);
  absl::Status s;
  {
    absl::StatusOr<std::unique_ptr<File>> f =
        fs_.Open(tmp_path, FileSystem::OpenMode::kCreateTruncate, 0600);
    if (!f.ok()) return WriteFailure(f.status());
    s = (*f)->Append(bytes);
    if (s.ok()) s = (*f)->Sync();
  }
  if (s.ok() && before_rename_) {
    if (absl::Status hook = before_rename_(); !hook.ok()) return hook;
  }
  if (s.ok()) s = fs_.Rename(tmp_path, final_path);
  if (!s.ok()) {
    fs_.Unlink(tmp_path).IgnoreError();  // the record it replaces is intact
    return WriteFailure(s);
  }
  return WriteFailure(fs_.SyncDir(dir));
}

absl::Status RecordStore::Remove(const std::string& name) {
  const std::string path = records_dir() + "/" + name;
  if (absl::Status s = fs_.Unlink(path); !s.ok()) {
    if (absl::IsNotFound(s)) return absl::OkStatus();
    return WriteFailure(s);
  }
  return WriteFailure(fs_.SyncDir(records_dir()));
}

absl::Status RecordStore::PutVolume(const records::VolumeRecord& record) {
  if (absl::Status s = ValidateId(record.volume_id(), "volume_id"); !s.ok()) return s;
  records::VolumeRecord copy = record;
  copy.set_schema_version(kSchemaVersion);
  return WriteAtomically(record.volume_id() + kVolumeSuffix, copy.SerializeAsString());
}

absl::Status RecordStore::DeleteVolume(const std::string& volume_id) {
  if (absl::Status s = ValidateId(volume_id, "volume_id"); !s.ok()) return s;
  return Remove(volume_id + kVolumeSuffix);
}

absl::Status RecordStore::PutSnapshot(const records::SnapshotRecord& record) {
  if (absl::Status s = ValidateId(record.snapshot_id(), "snapshot_id"); !s.ok()) return s;
  records::SnapshotRecord copy = record;
  copy.set_schema_version(kSchemaVersion);
  return WriteAtomically(record.snapshot_id() + kSnapshotSuffix, copy.SerializeAsString());
}

absl::Status RecordStore::DeleteSnapshot(const std::string& snapshot_id) {
  if (absl::Status s = ValidateId(snapshot_id, "snapshot_id"); !s.ok()) return s;
  return Remove(snapshot_id + kSnapshotSuffix);
}

absl::Status RecordStore::PutCredentials(const records::ClusterCredentials& creds) {
  RETURN_IF_ERROR(ValidateId(creds.cluster_id(), "cluster_id"));
  return WriteAtomicallyIn(credentials_dir(), creds.cluster_id() + kCredentialsSuffix,
                           creds.SerializeAsString());
}

absl::StatusOr<records::ClusterCredentials> RecordStore::GetCredentials(
    const std::string& cluster_id) {
  RETURN_IF_ERROR(ValidateId(cluster_id, "cluster_id"));
  const std::string path = absl::StrCat(credentials_dir(), "/", cluster_id, kCredentialsSuffix);
  absl::StatusOr<std::string> bytes = fs_.ReadFile(path);
  if (!bytes.ok()) {
    if (absl::IsNotFound(bytes.status())) {
      return absl::NotFoundError(absl::StrCat("no credentials kept for cluster ", cluster_id));
    }
    return absl::InternalError(bytes.status().message());
  }
  records::ClusterCredentials creds;
  if (!creds.ParseFromString(*bytes) || creds.cluster_id() != cluster_id) {
    return absl::DataLossError(
        absl::StrCat(path, " is not the credentials of cluster ", cluster_id));
  }
  return creds;
}

absl::Status RecordStore::DeleteCredentials(const std::string& cluster_id) {
  RETURN_IF_ERROR(ValidateId(cluster_id, "cluster_id"));
  const std::string path = absl::StrCat(credentials_dir(), "/", cluster_id, kCredentialsSuffix);
  if (absl::Status s = fs_.Unlink(path); !s.ok()) {
    if (absl::IsNotFound(s)) return absl::OkStatus();
    return WriteFailure(s);
  }
  return WriteFailure(fs_.SyncDir(credentials_dir()));
}

void RecordStore::SetAside(const std::string& name, absl::string_view why, Loaded* loaded) {
  const std::string from = records_dir() + "/" + name;
  std::string to = absl::StrCat(records_dir(), "/corrupt/", name, ".", ::time(nullptr));
  for (int i = 1; ::access(to.c_str(), F_OK) == 0; ++i) {
    to = absl::StrCat(records_dir(), "/corrupt/", name, ".", ::time(nullptr), ".", i);
  }
  if (absl::Status s = fs_.Rename(from, to); !s.ok()) {
    LOG(ERROR) << "corrupt record " << from << " (" << why
               << "); could not move it: " << s.message() << "; ignoring it";
  } else {
    LOG(ERROR) << "corrupt record " << from << " (" << why << "): moved to " << to
               << "; its volume is not served until an operator restores it";
    fs_.SyncDir(records_dir()).IgnoreError();
  }
  loaded->set_aside.push_back(to);
  corrupt_count_.fetch_add(1);
  if (corrupt_counter_ != nullptr) corrupt_counter_->Increment();
}

absl::StatusOr<RecordStore::Loaded> RecordStore::LoadAll() {
  Loaded loaded;
  absl::StatusOr<std::vector<std::string>> names = fs_.ListDir(records_dir());
  if (!names.ok()) return absl::InternalError(names.status().message());
  std::sort(names->begin(), names->end());
  for (const std::string& name : *names) {
    const bool is_volume = absl::EndsWith(name, kVolumeSuffix);
    const bool is_snapshot = absl::EndsWith(name, kSnapshotSuffix);
    if (!is_volume && !is_snapshot) continue;  // corrupt/, temp files, strangers
    absl::StatusOr<std::string> bytes = fs_.ReadFile(records_dir() + "/" + name);
    if (!bytes.ok()) {
      SetAside(name, bytes.status().message(), &loaded);
      continue;
    }
    absl::string_view id = name;
    if (is_volume) {
      id = absl::StripSuffix(id, kVolumeSuffix);
      records::VolumeRecord rec;
      if (!rec.ParseFromString(*bytes)) {
        SetAside(name, "not a VolumeRecord", &loaded);
      } else if (rec.volume_id() != id || rec.schema_version() != kSchemaVersion) {
        SetAside(name,
                 absl::StrCat("volume_id '", absl::CHexEscape(rec.volume_id()), "' / schema ",
                              rec.schema_version(), " do not match the file"),
                 &loaded);
      } else if (absl::Status s = CheckVolumePaths(rec); !s.ok()) {
        SetAside(name, s.message(), &loaded);
      } else {
        loaded.volumes.push_back(std::move(rec));
      }
    } else {
      id = absl::StripSuffix(id, kSnapshotSuffix);
      records::SnapshotRecord rec;
      if (!rec.ParseFromString(*bytes)) {
        SetAside(name, "not a SnapshotRecord", &loaded);
      } else if (rec.snapshot_id() != id || rec.schema_version() != kSchemaVersion) {
        SetAside(name,
                 absl::StrCat("snapshot_id '", absl::CHexEscape(rec.snapshot_id()), "' / schema ",
                              rec.schema_version(), " do not match the file"),
                 &loaded);
      } else if (absl::Status s = CheckSnapshotPaths(rec); !s.ok()) {
        SetAside(name, s.message(), &loaded);
      } else {
        loaded.snapshots.push_back(std::move(rec));
      }
    }
  }
  return loaded;
}

}  // namespace ublk_csi
