// UblkVolumeBackend: the real VolumeBackend. Each staged volume is one
// ublk::Export serving its backing file (ublk::FileTarget) on queues assigned
// by the node's shared ublk::WorkerPool, through one ublk::ControlDevice.
// Devices are made with USER_RECOVERY (+REISSUE: file I/O is idempotent)
// wherever the kernel offers it, so a plugin restart leaves them quiesced,
// not gone; Shutdown() (SIGTERM) detaches every export for that reason and
// never sends STOP_DEV under a mounted filesystem.
//
// Threads: thread-safe. Calls for different volumes run concurrently (one
// lock per volume around the blocking kernel calls); calls for one volume
// are serialized.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "csi/volume_backend.h"
#include "ublk/clock.h"
#include "ublk/export.h"
#include "ublk/features.h"
#include "ublk/file_target.h"
#include "ublk/kernel.h"
#include "ublk/mutex.h"
#include "ublk/rbd_cluster.h"
#include "ublk/rbd_target.h"
#include "ublk/worker_pool.h"

namespace prometheus {
class Registry;
class Counter;
template <typename T>
class Family;
}  // namespace prometheus

namespace ublk_csi {

struct UblkVolumeBackendOptions {
  // Why main() has no worker pool to give (e.g. io_uring blocked by a seccomp
  // profile): with a null pool, Usable() and every export call say this.
  absl::Status worker_pool_status = absl::OkStatus();
  uint16_t nr_queues = 1;
  uint16_t queue_depth = 64;
  // Largest request the kernel sends. 0: the worker pool's buffer slot size,
  // so every request fits a pool slot (larger ones would be served from the
  // heap and counted as heap fallbacks).
  uint32_t max_io_bytes = 0;
  // How long RemoveExport waits for the queues to drain after STOP_DEV.
  absl::Duration stop_drain_timeout = absl::Seconds(10);
  // After a server is killed the kernel quiesces its USER_RECOVERY devices
  // only once their char devices are released, so a plugin restarted at
  // once can find its device still LIVE. EnsureExport waits this long for
  // such a device to become QUIESCED before it treats the id as taken by
  // another server (and asks for a new device).
  absl::Duration quiesce_wait = absl::Seconds(10);
  // First poll interval; it doubles up to quiesce_poll. A poll is one
  // GET_DEV_INFO; the cap is how late the release may be noticed (100 ms
  // was up to 100 ms per device, paid again by every device still held).
  absl::Duration quiesce_poll_initial = absl::Milliseconds(2);
  absl::Duration quiesce_poll = absl::Milliseconds(10);
  // How a recovery cut short is resumed (ublk::RecoverOptions; its clock is
  // replaced by `clock`).
  ublk::RecoverOptions recover;
  // Nullable: a RealClock. Every wait and deadline of the backend uses it.
  const ublk::Clock* clock = nullptr;
  // Nullable. Gets ublk_csi_recovery_resume_total{event=busy_retry|rearm|gave_up}.
  prometheus::Registry* registry = nullptr;
  // MaxVolumes() reads this (ublk_drv's ublks_max, 6.3+); without it, 64
  // (the module's default, and the 6.1 limit in practice).
  std::string ublks_max_path = "/sys/module/ublk_drv/parameters/ublks_max";
  int default_max_volumes = 64;
  // RBD volumes (ExportSpec::rbd): the node's shared rados connections and
  // the RBD I/O metrics. Null: RBD exports are FAILED_PRECONDITION.
  ublk::RadosConnections* rbd_connections = nullptr;
  ublk::RbdMetrics* rbd_metrics = nullptr;
};

class UblkVolumeBackend final : public VolumeBackend {
 public:
  // `control` and `features` as main() got them (an error in either makes
  // the backend unusable: Usable() and every export call say why). `pool`
  // must outlive the backend; main() stops it after Shutdown().
  UblkVolumeBackend(absl::StatusOr<std::unique_ptr<ublk::ControlDevice>> control,
                    absl::StatusOr<ublk::KernelFeatures> features, ublk::WorkerPool* pool,
                    UblkVolumeBackendOptions options = {});
  // Detects the kernel's features (ublk::DetectFeatures, which logs nothing)
  // and opens the control device with the encoding chosen, through
  // `open_control`; a failure is kept as Usable()'s answer.
  static std::unique_ptr<UblkVolumeBackend> Open(const ublk::ControlDeviceFactory& open_control,
                                                 const ublk::FeatureOptions& feature_options,
                                                 ublk::WorkerPool* pool,
                                                 UblkVolumeBackendOptions options = {});
  ~UblkVolumeBackend() override;  // Shutdown()

  // See VolumeBackend. EnsureExport also recovers the volume's device when
  // its preferred id names a QUIESCED USER_RECOVERY device (the plugin was
  // restarted while the node kept running): the device keeps its id and the
  // pod's mount keeps working. An id taken by a device in any other state
  // is not touched: the kernel picks another.
  absl::StatusOr<ExportInfo> EnsureExport(const ExportSpec& spec) override;
  absl::Status RemoveExport(const std::string& volume_id) override;
  absl::Status ResizeExport(const std::string& volume_id, int64_t new_size_bytes) override;
  ExportStatus GetExportStatus(const std::string& volume_id) override;
  int MaxVolumes() override;
  absl::Status Usable() override;

  // For SIGTERM: detaches every export (queues dropped, no STOP_DEV: a
  // USER_RECOVERY device stays QUIESCED for the next process, I/O waits) and
  // refuses new exports (UNAVAILABLE). Idempotent.
  void Shutdown();

  // Null when unusable.
  const ublk::KernelFeatures* features() const { return features_.ok() ? &*features_ : nullptr; }
  // What the plugin stores in a volume's device (ublksrv_flags) and checks
  // before recovering one: "ub" in the top 16 bits, then 48 bits of FNV-1a
  // of the volume id. Never 0.
  static uint64_t OwnerTag(absl::string_view volume_id);

 private:
  struct Volume;

  // The volume's entry, created if missing.
  std::shared_ptr<Volume> GetVolume(const std::string& volume_id, bool create);
  void DropVolume(const std::string& volume_id, const std::shared_ptr<Volume>& volume);
  absl::StatusOr<ExportInfo> CreateExport(const ExportSpec& spec, Volume& volume);
  // Recovers `dev_id` if it is a QUIESCED USER_RECOVERY device; false if it
  // is not (the caller creates a device instead).
  absl::StatusOr<bool> MaybeRecover(const ExportSpec& spec, uint32_t dev_id, Volume& volume);
  ExportInfo InfoOf(const Volume& volume) const;
  // Whether one of this process's exports is ublk device `dev_id`.
  bool Serves(uint32_t dev_id);

  const absl::Status usable_;  // first: computed before control is moved
  const std::unique_ptr<ublk::ControlDevice> control_;
  const absl::StatusOr<ublk::KernelFeatures> features_;
  ublk::WorkerPool* const pool_;
  const UblkVolumeBackendOptions options_;
  const ublk::RealClock real_clock_;
  const ublk::Clock& clock_;
  prometheus::Counter* resume_busy_retries_ = nullptr;
  prometheus::Counter* resume_rearms_ = nullptr;
  prometheus::Counter* resume_gave_up_ = nullptr;

  ublk::Mutex mu_;
  std::map<std::string, std::shared_ptr<Volume>> volumes_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace ublk_csi
