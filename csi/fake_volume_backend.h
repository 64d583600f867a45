// A VolumeBackend that creates no device: each "export" is a symlink
// <device_dir>/ublkbN -> the backing file, so tools that write the "device"
// write the backing file. Used by unit tests and by `ublk-csi --backend=fake`
// for control-plane demos on hosts without ublk. Failures can be injected per
// operation, export states set by hand. Thread-safe.
#pragma once

#include <functional>
#include <map>
#include <string>

#include "absl/base/thread_annotations.h"
#include "csi/volume_backend.h"
#include "ublk/mutex.h"

namespace ublk_csi {

class FakeVolumeBackend final : public VolumeBackend {
 public:
  enum class Op { kEnsure, kRemove, kResize };

  FakeVolumeBackend(std::string device_dir, int max_volumes)
      : device_dir_(std::move(device_dir)), max_volumes_(max_volumes) {}

  absl::StatusOr<ExportInfo> EnsureExport(const ExportSpec& spec) override;
  absl::Status RemoveExport(const std::string& volume_id) override;
  absl::Status ResizeExport(const std::string& volume_id, int64_t new_size_bytes) override;
  ExportStatus GetExportStatus(const std::string& volume_id) override;
  int MaxVolumes() override { return max_volumes_; }
  absl::Status Usable() override;

  // The next call of `op` fails with `status` (once).
  void FailNext(Op op, absl::Status status);
  // Marks a running export degraded/failed with a message (or live again).
  void SetState(const std::string& volume_id, ExportState state, std::string message);
  void SetUsable(absl::Status status);
  // Makes ResizeExport answer UNIMPLEMENTED, like a kernel without live resize.
  void SetResizeSupported(bool supported);
  // Runs at the start of every EnsureExport, outside the backend's lock (tests
  // use it to hold a call in flight).
  void SetEnsureHook(std::function<void(const ExportSpec&)> hook);

  int ensure_calls() const;
  int export_count() const;
  // The spec the export of volume_id was last created with (empty if none).
  ExportSpec LastSpec(const std::string& volume_id) const;

 private:
  struct Export {
    ExportSpec spec;
    ExportInfo info;
    std::string message;
  };

  absl::Status TakeFailure(Op op) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string device_dir_;
  const int max_volumes_;
  mutable ublk::Mutex mu_;
  std::map<std::string, Export> exports_ ABSL_GUARDED_BY(mu_);
  std::map<Op, absl::Status> failures_ ABSL_GUARDED_BY(mu_);
  absl::Status usable_ ABSL_GUARDED_BY(mu_);
  bool resize_supported_ ABSL_GUARDED_BY(mu_) = true;
  int ensure_calls_ ABSL_GUARDED_BY(mu_) = 0;
  std::function<void(const ExportSpec&)> ensure_hook_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ublk_csi
