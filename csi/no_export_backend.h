// The VolumeBackend of the central controller (--mode=controller): it
// creates, deletes, snapshots and resizes RBD images through RbdAdmin and
// never serves a device, so it needs no ublk driver, worker pool or
// io_uring. Every export call is refused; the backend itself is usable.
// Stateless and thread-safe.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "csi/volume_backend.h"

namespace ublk_csi {

class NoExportBackend final : public VolumeBackend {
 public:
  absl::StatusOr<ExportInfo> EnsureExport(const ExportSpec& spec) override {
    return Refused(spec.volume_id);
  }
  absl::Status RemoveExport(const std::string&) override { return absl::OkStatus(); }
  absl::Status ResizeExport(const std::string& volume_id, int64_t) override {
    return Refused(volume_id);
  }
  ExportStatus GetExportStatus(const std::string&) override { return {}; }
  int MaxVolumes() override { return 0; }
  absl::Status Usable() override { return absl::OkStatus(); }

 private:
  static absl::Status Refused(const std::string& volume_id) {
    return absl::FailedPreconditionError(
        "volume " + volume_id +
        ": this plugin runs with --mode=controller and serves no devices (the node plugin "
        "stages volumes)");
  }
};

}  // namespace ublk_csi
