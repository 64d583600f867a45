// The seam between the CSI services and the block-device engine: one export
// (a /dev/ublkbN serving a backing file) per staged volume. The CSI layer
// only ever talks to this interface; the real implementation sits over
// ublk::Export and the shared worker pool (csi/ublk_volume_backend.h), a fake
// (csi/fake_volume_backend.h) serves tests and control-plane demos.
// Implementations are thread-safe: calls for different volumes may run
// concurrently; the VolumeManager never runs two calls for one volume at once.
//
// What the real (ublk) implementation owes the CSI layer:
//  - EnsureExport creates the device with UBLK_F_USER_RECOVERY (+_REISSUE for
//    the file target), asks ADD_DEV for spec.preferred_dev_id first, and is a
//    no-op returning the live export when one exists (kubelet repeats
//    NodeStage after every restart). A device the kernel refuses because of
//    ublks_max is RESOURCE_EXHAUSTED naming the limit, once (no retry loop);
//    a volume still being re-attached after a restart is UNAVAILABLE.
//  - RemoveExport is only called after the volume's filesystems are
//    unmounted; it stops and deletes the device (unmap/close the char fd
//    before DEL_DEV).
//  - GetExportStatus never blocks on I/O; it feeds NodeGetVolumeStats'
//    VolumeCondition and `ublk-csi-ctl status`.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace ublk_csi {

// An RBD image to serve instead of a backing file: what the engine's RBD
// target opens (through its per-cluster connection). `key` is the cephx key:
// in memory only, never logged.
struct RbdExportSpec {
  std::string monitors;
  std::string user;
  std::string key;  // SECRET
  std::string pool;
  std::string image;
};

struct ExportSpec {
  std::string volume_id;
  std::string backing_file;  // absolute path of the (sparse) backing file; "" with rbd
  std::optional<RbdExportSpec> rbd;
  int64_t size_bytes = 0;
  uint32_t logical_block_size = 512;
  // The device id this volume had before (persisted in its record), asked for
  // again so device paths stay stable across reboots; -1 = any.
  int32_t preferred_dev_id = -1;
};

enum class ExportState {
  kAbsent,      // no export for this volume
  kRecovering,  // found after a restart, not serving yet (retry later)
  kLive,        // serving I/O
  kDegraded,    // serving, but on a fallback path (e.g. heap buffers)
  kFailed,      // cannot serve; `message` says why
};

const char* ExportStateName(ExportState state);

struct ExportInfo {
  std::string device_path;  // e.g. /dev/ublkb3
  int32_t dev_id = -1;
  int64_t size_bytes = 0;
  ExportState state = ExportState::kAbsent;
  // This call re-attached a device a previous process left QUIESCED (as
  // opposed to creating one, or finding this process's export running).
  bool recovered = false;
};

struct ExportStatus {
  ExportState state = ExportState::kAbsent;
  std::string message;  // why degraded/failed; empty otherwise
  std::string device_path;
  int32_t dev_id = -1;
  int worker = -1;        // worker thread serving queue 0, -1 if unknown
  std::string copy_mode;  // ublk::CopyModeName: "zero_copy" | "user_copy" | "get_data" | ""
};

class VolumeBackend {
 public:
  virtual ~VolumeBackend() = default;

  // Creates the export for spec.volume_id, or returns the one already running
  // (idempotent; a running export of a different size is not resized here).
  // RESOURCE_EXHAUSTED when the kernel's device limit is reached, UNAVAILABLE
  // while the volume is still being recovered after a restart, NOT_FOUND when
  // the backing file is missing.
  virtual absl::StatusOr<ExportInfo> EnsureExport(const ExportSpec& spec) = 0;
  // Stops and deletes the export; OK if there is none.
  virtual absl::Status RemoveExport(const std::string& volume_id) = 0;
  // Grows a running export's device to new_size_bytes (the backing file was
  // grown already). UNIMPLEMENTED where the kernel cannot resize a live
  // device; NOT_FOUND when there is no export.
  virtual absl::Status ResizeExport(const std::string& volume_id, int64_t new_size_bytes) = 0;
  virtual ExportStatus GetExportStatus(const std::string& volume_id) = 0;
  // How many exports this node can hold (ublks_max), for NodeGetInfo.
  virtual int MaxVolumes() = 0;
  // OK when exports can be created at all (driver loaded, ...); else why.
  virtual absl::Status Usable() = 0;
};

}  // namespace ublk_csi
