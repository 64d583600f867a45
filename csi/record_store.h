// Crash-safe persistence of the plugin's volume and snapshot records, and the
// data-dir layout they live in:
//   <data-dir>/records/<id>.volume    one VolumeRecord (binary protobuf)
//   <data-dir>/records/<id>.snapshot  one SnapshotRecord
//   <data-dir>/records/corrupt/       unreadable records, set aside, never deleted
//   <data-dir>/volumes/<id>.img       sparse backing files
//   <data-dir>/snapshots/<id>.img     snapshot data
//   <data-dir>/credentials/<cluster>.cred  cephx credentials of one RBD
//                                     cluster (ClusterCredentials, 0600),
//                                     apart from records: records never
//                                     hold a secret
// Every write is atomic (temp file, fsync, rename, fsync dir), so after a
// crash at any instant each record file holds either the old or the new
// record. Thread-safe; callers serialize writes to one record themselves
// (the VolumeManager's per-volume lock).
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "csi/file_system.h"
#include "records.pb.h"

namespace prometheus {
class Registry;
template <typename T>
class Family;
class Counter;
}  // namespace prometheus

namespace ublk_csi {

// Volume and snapshot IDs (and anything else that becomes a file name):
// 1-128 of [A-Za-z0-9_.-], not starting with '.', so an ID can never name a
// path outside its directory. INVALID_ARGUMENT naming `field` otherwise.
absl::Status ValidateId(absl::string_view id, absl::string_view field);

class RecordStore {
 public:
  struct Loaded {
    std::vector<records::VolumeRecord> volumes;
    std::vector<records::SnapshotRecord> snapshots;
    std::vector<std::string> set_aside;  // corrupt record files moved to records/corrupt/
  };

  // Creates the layout under data_dir if needed and removes temp files a
  // crash left behind. `registry` (may be null) gets
  // ublk_csi_corrupt_records_total. FAILED_PRECONDITION if the data dir or
  // one of its subdirs is world-writable or a symlink: anyone could then
  // plant records or backing files the plugin acts on as root. Every file
  // in the data dir is written through `fs` (null: the real one), which
  // must outlive the store; the VolumeManager uses it too (fs()).
  static absl::StatusOr<std::unique_ptr<RecordStore>> Open(const std::string& data_dir,
                                                           prometheus::Registry* registry,
                                                           FileSystem* fs = nullptr);

  // Reads every record. A file that cannot be read or parsed, whose ID
  // does not match its name, or whose paths fail CheckVolumePaths /
  // CheckSnapshotPaths, is moved to records/corrupt/, logged once and
  // counted; the others load.
  absl::StatusOr<Loaded> LoadAll();

  absl::Status PutVolume(const records::VolumeRecord& record);
  absl::Status DeleteVolume(const std::string& volume_id);  // OK if absent
  absl::Status PutSnapshot(const records::SnapshotRecord& record);
  absl::Status DeleteSnapshot(const std::string& snapshot_id);  // OK if absent

  // A failed write leaves the record as it was (old bytes, or absent) and
  // no temp file, except after a failed fsync of the records dir: the rename
  // is then done but may not survive a crash. No space is
  // RESOURCE_EXHAUSTED, any other failure INTERNAL; the error names the
  // step and the path.
  //
  // Records are untrusted input. A record's data-dir paths (backing_file,
  // snapshot file) must be clean relative paths that resolve inside the data
  // dir through no symlink; its node paths (staged, published, created) must
  // be absolute and clean, and every created path one of the others. The
  // error names the field and the path.
  absl::Status CheckVolumePaths(const records::VolumeRecord& rec) const;
  absl::Status CheckSnapshotPaths(const records::SnapshotRecord& rec) const;

  // The credentials a node keeps per RBD cluster (see ClusterCredentials):
  // written atomically like records; Get is NOT_FOUND when none are kept.
  absl::Status PutCredentials(const records::ClusterCredentials& creds);
  absl::StatusOr<records::ClusterCredentials> GetCredentials(const std::string& cluster_id);
  absl::Status DeleteCredentials(const std::string& cluster_id);  // OK if absent

  const std::string& data_dir() const { return data_dir_; }
  std::string credentials_dir() const { return data_dir_ + "/credentials"; }
  std::string records_dir() const { return data_dir_ + "/records"; }
  // Paths relative to the data dir, as stored in records.
  static std::string VolumeFileRel(const std::string& volume_id);
  static std::string SnapshotFileRel(const std::string& snapshot_id);
  std::string Abs(const std::string& rel) const { return data_dir_ + "/" + rel; }
  int64_t corrupt_count() const { return corrupt_count_.load(); }
  FileSystem& fs() const { return fs_; }

  // Test seam: runs after a record's temp file is written and synced, just
  // before the rename; an error aborts the write there (as a crash would).
  void SetBeforeRenameHookForTest(std::function<absl::Status()> hook) {
    before_rename_ = std::move(hook);
  }

 private:
  RecordStore(std::string data_dir, prometheus::Counter* corrupt_counter, FileSystem& fs)
      : data_dir_(std::move(data_dir)), corrupt_counter_(corrupt_counter), fs_(fs) {}
  absl::Status WriteAtomically(const std::string& name, const std::string& bytes);
  absl::Status WriteAtomicallyIn(const std::string& dir, const std::string& name,
                                 const std::string& bytes);
  absl::Status Remove(const std::string& name);
  void SetAside(const std::string& name, absl::string_view why, Loaded* loaded);

  const std::string data_dir_;
  prometheus::Counter* corrupt_counter_;
  FileSystem& fs_;
  std::atomic<int64_t> corrupt_count_{0};
  std::function<absl::Status()> before_rename_;
};

}  // namespace ublk_csi
