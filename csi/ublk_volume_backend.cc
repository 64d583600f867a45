#include "csi/ublk_volume_backend.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <functional>
#include <optional>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "glog/logging.h"
#include "prometheus/counter.h"
#include "prometheus/registry.h"
#include "ublk/file_target.h"
#include "ublk/kernel_real.h"
#include "ublk/mutex.h"
#include "ublk/rbd_target.h"

namespace ublk_csi {
namespace {

absl::Status WithContext(const absl::Status& s, absl::string_view context) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(context, ": ", s.message()));
}

absl::Status UnusableStatus(const absl::StatusOr<std::unique_ptr<ublk::ControlDevice>>& control,
                            const absl::StatusOr<ublk::KernelFeatures>& features,
                            const ublk::WorkerPool* pool, const absl::Status& pool_status) {
  // No pool is the first thing to say: nothing can be served without one,
  // whatever the driver's state.
  if (pool == nullptr && !pool_status.ok()) return pool_status;
  absl::Status s;
  if (!features.ok()) {
    s = features.status();
  } else if (!control.ok()) {
    s = control.status();
  } else if (*control == nullptr) {
    s = absl::FailedPreconditionError("no control device");
  } else if (pool == nullptr) {
    return absl::FailedPreconditionError("ublk backend: no worker pool");
  }
  if (s.ok()) return s;
  if (absl::StrContains(s.message(), "ublk_drv")) return s;
  return absl::Status(s.code(), absl::StrCat("ublk_drv not usable: ", s.message()));
}

int ShiftOf(uint32_t block_size) {
  for (int shift = 9; shift <= 12; ++shift) {
    if (block_size == (1u << shift)) return shift;
  }
  return -1;
}

}  // namespace

struct UblkVolumeBackend::Volume {
  ublk::Mutex op_mu;  // held for a whole operation on this volume

  // Held only briefly, so GetExportStatus never waits for a kernel call.
  ublk::Mutex mu;
  std::shared_ptr<ublk::Export> exp ABSL_GUARDED_BY(mu);
  std::shared_ptr<ublk::Target> target ABSL_GUARDED_BY(mu);
  // Grows `target` (FileTarget::Grow or RbdTarget::Grow).
  std::function<absl::Status(uint64_t)> grow ABSL_GUARDED_BY(mu);
  std::vector<ublk::Worker*> workers ABSL_GUARDED_BY(mu);
  bool creating ABSL_GUARDED_BY(mu) = false;
  std::string error ABSL_GUARDED_BY(mu);  // why the last EnsureExport failed
};

uint64_t UblkVolumeBackend::OwnerTag(absl::string_view volume_id) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a, 64 bits
  for (unsigned char c : volume_id) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return (uint64_t{0x7562} << 48) | (h & ((uint64_t{1} << 48) - 1));
}

UblkVolumeBackend::UblkVolumeBackend(absl::StatusOr<std::unique_ptr<ublk::ControlDevice>> control,
                                     absl::StatusOr<ublk::KernelFeatures> features,
                                     ublk::WorkerPool* pool, UblkVolumeBackendOptions options)
    : usable_(UnusableStatus(control, features, pool, options.worker_pool_status)),
      control_(control.ok() ? std::move(*control) : nullptr),
      features_(std::move(features)),
      pool_(pool),
      options_(std::move(options)),
      clock_(options_.clock != nullptr ? *options_.clock : real_clock_) {
  if (!usable_.ok()) LOG(WARNING) << "ublk volume backend unusable: " << usable_;
  if (options_.registry != nullptr) {
    auto& family = prometheus::BuildCounter()
                       .Name("ublk_csi_recovery_resume_total")
                       .Help(
                           "Resuming devices whose previous recovery was cut short: "
                           "busy_retry (START_USER_RECOVERY retried while the old server's "
                           "char device was not released), rearm (a 6.1-6.15 device left "
                           "with no queue ready, re-armed), gave_up (the char device stayed "
                           "held: the volume is marked failed, see README)")
                       .Register(*options_.registry);
    resume_busy_retries_ = &family.Add({{"event", "busy_retry"}});
    resume_rearms_ = &family.Add({{"event", "rearm"}});
    resume_gave_up_ = &family.Add({{"event", "gave_up"}});
  }
}

std::unique_ptr<UblkVolumeBackend> UblkVolumeBackend::Open(
    const ublk::ControlDeviceFactory& open_control, const ublk::FeatureOptions& feature_options,
    ublk::WorkerPool* pool, UblkVolumeBackendOptions options) {
  absl::StatusOr<ublk::KernelFeatures> features =
      ublk::DetectFeatures(open_control, feature_options);
  absl::StatusOr<std::unique_ptr<ublk::ControlDevice>> control =
      absl::FailedPreconditionError("kernel features not detected");
  if (features.ok()) {
    ublk::LogKernelFeatures(*features);
    control = open_control(features->encoding);
  } else {
    control = features.status();
  }
  return std::make_unique<UblkVolumeBackend>(std::move(control), std::move(features), pool,
                                             std::move(options));
}

UblkVolumeBackend::~UblkVolumeBackend() { Shutdown(); }

absl::Status UblkVolumeBackend::Usable() { return usable_; }

int UblkVolumeBackend::MaxVolumes() {
  absl::StatusOr<int> max = ublk::ReadUblksMax(options_.ublks_max_path);
  if (max.ok() && *max > 0) return *max;
  VLOG(1) << "ublks_max unknown (" << (max.ok() ? "not positive" : max.status().ToString())
          << "), assuming " << options_.default_max_volumes;
  return options_.default_max_volumes;
}

std::shared_ptr<UblkVolumeBackend::Volume> UblkVolumeBackend::GetVolume(
    const std::string& volume_id, bool create) {
  ublk::MutexLock lock(&mu_);
  auto it = volumes_.find(volume_id);
  if (it != volumes_.end()) return it->second;
  if (!create) return nullptr;
  auto v = std::make_shared<Volume>();
  volumes_.emplace(volume_id, v);
  return v;
}

void UblkVolumeBackend::DropVolume(const std::string& volume_id,
                                   const std::shared_ptr<Volume>& volume) {
  ublk::MutexLock lock(&mu_);
  auto it = volumes_.find(volume_id);
  if (it != volumes_.end() && it->second == volume) volumes_.erase(it);
}

ExportInfo UblkVolumeBackend::InfoOf(const Volume& v) const ABSL_NO_THREAD_SAFETY_ANALYSIS {
  ExportInfo info;
  info.device_path = v.exp->block_device_path();
  info.dev_id = static_cast<int32_t>(v.exp->dev_id());
  info.size_bytes = static_cast<int64_t>(v.exp->size_bytes());
  info.state = ExportState::kLive;
  for (ublk::Worker* w : v.workers) {
    if (w->buffer_pool_degraded()) info.state = ExportState::kDegraded;
  }
  return info;
}

absl::StatusOr<ExportInfo> UblkVolumeBackend::EnsureExport(const ExportSpec& spec) {
  if (!usable_.ok()) return usable_;
  if (spec.volume_id.empty()) return absl::InvalidArgumentError("export: volume_id is empty");
  const std::string ctx = absl::StrCat("volume ", spec.volume_id);
  if (spec.rbd && options_.rbd_connections == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(ctx, ": an RBD volume, and this plugin was started without --rbd"));
  }
  if (!spec.rbd && spec.backing_file.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(ctx, ": backing_file is empty"));
  }
  if (spec.size_bytes <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(ctx, ": size_bytes ", spec.size_bytes, " must be positive"));
  }
  if (ShiftOf(spec.logical_block_size) < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        ctx, ": logical_block_size ", spec.logical_block_size, " must be 512, 1024, 2048 or 4096"));
  }
  {
    ublk::MutexLock lock(&mu_);
    if (shut_down_) {
      return absl::UnavailableError(absl::StrCat(ctx, ": the plugin is shutting down"));
    }
  }
  std::shared_ptr<Volume> v = GetVolume(spec.volume_id, /*create=*/true);
  ublk::MutexLock op(&v->op_mu);
  std::shared_ptr<ublk::Export> old;
  std::vector<ublk::Worker*> old_workers;
  {
    ublk::MutexLock lock(&v->mu);
    if (v->exp != nullptr && v->exp->state() == ublk::Export::State::kRunning) return InfoOf(*v);
    old = std::move(v->exp);
    old_workers = std::move(v->workers);
    v->exp = nullptr;
    v->workers.clear();
    v->target = nullptr;
    v->grow = nullptr;
    v->creating = true;
    v->error.clear();
  }
  if (old != nullptr) {
    // A leftover that does not serve (failed, or detached by a Shutdown that
    // raced with this call): give its device back before making a new one.
    LOG(WARNING) << ctx << ": replacing its export of ublk device " << old->dev_id()
                 << ", which is " << ublk::Export::StateName(old->state());
    absl::Status del = old->Delete();
    if (!del.ok()) LOG(WARNING) << ctx << ": " << del;
    old.reset();
    pool_->Release(old_workers);
  }
  absl::StatusOr<ExportInfo> info = CreateExport(spec, *v);
  ublk::MutexLock lock(&v->mu);
  v->creating = false;
  if (!info.ok()) {
    v->error = std::string(info.status().message());
    LOG(WARNING) << info.status();
  }
  return info;
}

absl::StatusOr<bool> UblkVolumeBackend::MaybeRecover(const ExportSpec& spec, uint32_t dev_id,
                                                     Volume& v) {
  const std::string ctx = absl::StrCat("volume ", spec.volume_id);
  absl::StatusOr<ublk::DeviceInfo> dev = control_->GetDeviceInfo(dev_id);
  if (!dev.ok()) {
    if (dev.status().code() != absl::StatusCode::kNotFound) {
      LOG(WARNING) << ctx << ": ublk device " << dev_id << ": " << dev.status();
    }
    return false;
  }
  if ((dev->flags & UBLK_F_USER_RECOVERY) == 0) return false;
  // Ours only: a device another server made (or one made for another
  // volume) is left alone, and the volume gets a device of its own. 0 is a
  // device from a version that did not tag, adopted as before.
  const uint64_t want_tag = OwnerTag(spec.volume_id);
  if (dev->ublksrv_flags != 0 && dev->ublksrv_flags != want_tag) {
    LOG(WARNING) << ctx << ": ublk device " << dev_id
                 << " was not made for this volume (owner tag 0x" << std::hex << dev->ublksrv_flags
                 << ", want 0x" << want_tag << std::dec << "); not recovering it";
    return false;
  }
  // LIVE and not served by this process: perhaps our dead predecessor whose
  // char device is not released yet. (Not told apart by ublksrv_pid: in a
  // container both processes may well be pid 1.)
  if (dev->state == UBLK_S_DEV_LIVE && !Serves(dev_id)) {
    const absl::Time give_up = clock_.Now() + options_.quiesce_wait;
    absl::Duration poll = options_.quiesce_poll_initial;
    while (dev.ok() && dev->state == UBLK_S_DEV_LIVE && clock_.Now() < give_up) {
      clock_.SleepFor(poll);
      poll = std::min(poll * 2, options_.quiesce_poll);
      dev = control_->GetDeviceInfo(dev_id);
    }
    if (!dev.ok()) return false;
    if (dev->state == UBLK_S_DEV_QUIESCED) {
      VLOG(1) << ctx << ": ublk device " << dev_id
              << " became QUIESCED after its previous server exited";
    }
  }
  if (dev->state != UBLK_S_DEV_QUIESCED) return false;
  std::shared_ptr<ublk::Target> target;
  {
    ublk::MutexLock lock(&v.mu);
    target = v.target;
  }
  std::vector<ublk::Worker*> workers = pool_->Assign(dev->nr_hw_queues);
  ublk::RecoverOptions ro = options_.recover;
  ro.clock = &clock_;
  ublk::RecoverStats stats;
  absl::StatusOr<std::unique_ptr<ublk::Export>> e =
      ublk::Export::Recover(*control_, workers, target, dev_id, ro, &stats);
  if (resume_busy_retries_ != nullptr) {
    resume_busy_retries_->Increment(stats.busy_retries);
    resume_rearms_->Increment(stats.rearms);
    if (stats.gave_up) resume_gave_up_->Increment();
  }
  // Busy retries are the norm right after a kill (the dead server's char
  // device is released late) and are counted in the metric: debug only. A
  // re-arm is rare and worth a line. A mass recovery logs one progress line
  // a second (RecoveryManager), not lines per volume: every line is written
  // under glog's lock, which serialized hundreds of recoveries behind it.
  if (stats.rearms > 0) {
    LOG(INFO) << ctx << ": ublk device " << dev_id << ": recovery resumed after "
              << stats.busy_retries << " busy retries, " << stats.rearms << " re-arm(s)";
  } else if (stats.busy_retries > 0) {
    VLOG(1) << ctx << ": ublk device " << dev_id << ": START_USER_RECOVERY retried "
            << stats.busy_retries << " time(s) while the previous server's char device was held";
  }
  if (!e.ok()) {
    pool_->Release(workers);
    // Not replaced by a new device: this one may still be mounted.
    return WithContext(e.status(), absl::StrCat(ctx, ": recovering its ublk device ", dev_id));
  }
  VLOG(1) << ctx << ": recovered ublk device " << dev_id << " left by a previous process";
  if ((*e)->copy_mode() != features_->copy_mode) {
    // Device flags are fixed at ADD_DEV: a device made in another mode (e.g.
    // zero copy before the operator forced --copy_mode=user_copy) is served
    // in its own mode until it is re-created.
    LOG(WARNING) << ctx << ": ublk device " << dev_id << " was created in copy mode "
                 << ublk::CopyModeName((*e)->copy_mode()) << " and is served in it, not in the "
                 << "configured " << ublk::CopyModeName(features_->copy_mode);
  }
  ublk::MutexLock lock(&v.mu);
  v.exp = std::move(*e);
  v.workers = std::move(workers);
  return true;
}

bool UblkVolumeBackend::Serves(uint32_t dev_id) {
  std::vector<std::shared_ptr<Volume>> all;
  {
    ublk::MutexLock lock(&mu_);
    for (const auto& [id, v] : volumes_) all.push_back(v);
  }
  for (const auto& v : all) {
    ublk::MutexLock lock(&v->mu);
    if (v->exp != nullptr && v->exp->dev_id() == dev_id) return true;
  }
  return false;
}

absl::StatusOr<ExportInfo> UblkVolumeBackend::CreateExport(const ExportSpec& spec, Volume& v) {
  const std::string ctx = absl::StrCat("volume ", spec.volume_id);
  std::shared_ptr<ublk::Target> target;
  std::function<absl::Status(uint64_t)> grow;
  if (spec.rbd) {
    // The node's shared connection to the cluster (one per mon_host+user),
    // re-made by the registry after a restart or a blocklisting.
    absl::StatusOr<std::shared_ptr<ublk::RadosConnection>> conn = options_.rbd_connections->Get(
        ublk::RbdClusterConfig{spec.rbd->monitors, spec.rbd->user, spec.rbd->key});
    if (!conn.ok()) return WithContext(conn.status(), ctx);
    ublk::RbdTargetOptions ro;
    ro.pool = spec.rbd->pool;
    ro.image = spec.rbd->image;
    ro.size_bytes = static_cast<uint64_t>(spec.size_bytes);
    ro.metrics = options_.rbd_metrics;
    absl::StatusOr<std::unique_ptr<ublk::RbdTarget>> rbd = ublk::RbdTarget::Open(*conn, ro);
    if (!rbd.ok()) return WithContext(rbd.status(), ctx);
    std::shared_ptr<ublk::RbdTarget> t = std::move(*rbd);
    grow = [t](uint64_t size) { return t->Grow(size); };
    target = std::move(t);
  } else {
    ublk::FileTargetOptions fo;
    fo.path = spec.backing_file;
    fo.size_bytes = static_cast<uint64_t>(spec.size_bytes);
    absl::StatusOr<std::unique_ptr<ublk::FileTarget>> file = ublk::FileTarget::Open(fo);
    if (!file.ok()) return WithContext(file.status(), ctx);
    std::shared_ptr<ublk::FileTarget> t = std::move(*file);
    grow = [t](uint64_t size) { return t->Grow(size); };
    target = std::move(t);
  }
  {
    ublk::MutexLock lock(&v.mu);
    v.target = target;
    v.grow = grow;
  }

  if (spec.preferred_dev_id >= 0) {
    absl::StatusOr<bool> recovered =
        MaybeRecover(spec, static_cast<uint32_t>(spec.preferred_dev_id), v);
    if (!recovered.ok()) return recovered.status();
    if (*recovered) {
      ublk::MutexLock lock(&v.mu);
      ExportInfo info = InfoOf(v);
      info.recovered = true;
      return info;
    }
  }

  const ublk::KernelFeatures& kf = *features_;
  ublk::ExportOptions eo;
  eo.dev_id =
      spec.preferred_dev_id >= 0 ? static_cast<uint32_t>(spec.preferred_dev_id) : ublk::kAnyDevId;
  eo.size_bytes = static_cast<uint64_t>(spec.size_bytes);
  eo.logical_bs_shift = static_cast<uint8_t>(ShiftOf(spec.logical_block_size));
  eo.physical_bs_shift = std::max<uint8_t>(12, eo.logical_bs_shift);
  eo.nr_queues = options_.nr_queues;
  eo.queue_depth = options_.queue_depth;
  eo.max_io_bytes = options_.max_io_bytes != 0
                        ? options_.max_io_bytes
                        : static_cast<uint32_t>(pool_->buffer_pool_options().slot_size);
  eo.user_recovery = kf.user_recovery;
  // The file and RBD targets' reads and writes are idempotent (plain
  // positional I/O): reissuing what the dead server had in hand is safe,
  // failing it (plain recovery) is not.
  eo.user_recovery_reissue = kf.user_recovery && kf.user_recovery_reissue;
  // librbd needs the data in user memory: no zero copy for RBD.
  eo.copy_mode = ublk::CopyModeFor(kf.copy_mode, kf.features, *target);
  eo.owner_tag = OwnerTag(spec.volume_id);
  eo.stop_drain_timeout = options_.stop_drain_timeout;

  std::vector<ublk::Worker*> workers = pool_->Assign(eo.nr_queues);
  absl::StatusOr<std::unique_ptr<ublk::Export>> e =
      ublk::Export::Create(*control_, workers, target, eo);
  if (!e.ok() && e.status().code() == absl::StatusCode::kAlreadyExists &&
      eo.dev_id != ublk::kAnyDevId) {
    LOG(WARNING) << ctx << ": its ublk device id " << eo.dev_id
                 << " is taken by another device; the kernel picks a new id (" << e.status() << ")";
    eo.dev_id = ublk::kAnyDevId;
    e = ublk::Export::Create(*control_, workers, target, eo);
  }
  if (!e.ok()) {
    pool_->Release(workers);
    return WithContext(e.status(), ctx);
  }
  std::shared_ptr<ublk::Export> exp = std::move(*e);
  absl::Status s = exp->Start();
  if (!s.ok()) {
    absl::Status del = exp->Delete();
    if (!del.ok()) LOG(WARNING) << ctx << ": cleanup after failed start: " << del;
    exp.reset();
    pool_->Release(workers);
    return WithContext(s, ctx);
  }
  ublk::MutexLock lock(&v.mu);
  v.exp = std::move(exp);
  v.workers = std::move(workers);
  return InfoOf(v);
}

absl::Status UblkVolumeBackend::RemoveExport(const std::string& volume_id) {
  std::shared_ptr<Volume> v = GetVolume(volume_id, /*create=*/false);
  if (v == nullptr) return absl::OkStatus();
  const std::string ctx = absl::StrCat("volume ", volume_id);
  ublk::MutexLock op(&v->op_mu);
  std::shared_ptr<ublk::Export> exp;
  {
    ublk::MutexLock lock(&v->mu);
    exp = v->exp;
  }
  if (exp != nullptr) {
    if (exp->state() == ublk::Export::State::kRunning) {
      absl::Status s = exp->Stop();
      if (!s.ok() && s.code() != absl::StatusCode::kNotFound) return WithContext(s, ctx);
    }
    absl::Status s = exp->Delete();
    if (!s.ok()) {
      if (s.code() != absl::StatusCode::kNotFound) return WithContext(s, ctx);
      LOG(WARNING) << ctx << ": ublk device " << exp->dev_id() << " was already gone: " << s;
    }
  }
  std::vector<ublk::Worker*> workers;
  {
    ublk::MutexLock lock(&v->mu);
    v->exp = nullptr;
    v->target = nullptr;
    v->grow = nullptr;
    workers = std::move(v->workers);
    v->workers.clear();
  }
  exp.reset();
  pool_->Release(workers);
  DropVolume(volume_id, v);
  return absl::OkStatus();
}

absl::Status UblkVolumeBackend::ResizeExport(const std::string& volume_id, int64_t new_size_bytes) {
  const std::string ctx = absl::StrCat("volume ", volume_id);
  std::shared_ptr<Volume> v = GetVolume(volume_id, /*create=*/false);
  if (v == nullptr) return absl::NotFoundError(absl::StrCat(ctx, ": no export"));
  ublk::MutexLock op(&v->op_mu);
  std::shared_ptr<ublk::Export> exp;
  std::function<absl::Status(uint64_t)> grow;
  {
    ublk::MutexLock lock(&v->mu);
    exp = v->exp;
    if (v->target != nullptr) grow = v->grow;
  }
  if (exp == nullptr || !grow) {
    return absl::NotFoundError(absl::StrCat(ctx, ": no export"));
  }
  if (new_size_bytes <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(ctx, ": new size ", new_size_bytes, " must be positive"));
  }
  const uint64_t new_size = static_cast<uint64_t>(new_size_bytes);
  const uint64_t current = exp->size_bytes();
  if (new_size == current) return absl::OkStatus();
  if (new_size < current) {
    return absl::InvalidArgumentError(absl::StrCat(ctx, ": cannot shrink ublk device ",
                                                   exp->dev_id(), " from ", current, " to ",
                                                   new_size, " bytes"));
  }
  // The target may stay grown if the kernel refuses: it only bounds I/O the
  // kernel will not send beyond the device's size anyway.
  if (absl::Status s = grow(new_size); !s.ok()) return WithContext(s, ctx);
  if (absl::Status s = exp->Resize(new_size); !s.ok()) return WithContext(s, ctx);
  LOG(INFO) << ctx << ": ublk device " << exp->dev_id() << " resized to " << new_size << " bytes";
  return absl::OkStatus();
}

ExportStatus UblkVolumeBackend::GetExportStatus(const std::string& volume_id) {
  ExportStatus st;
  std::shared_ptr<Volume> v = GetVolume(volume_id, /*create=*/false);
  if (v == nullptr) return st;
  std::shared_ptr<ublk::Export> exp;
  std::vector<ublk::Worker*> workers;
  {
    ublk::MutexLock lock(&v->mu);
    exp = v->exp;
    workers = v->workers;
    if (exp == nullptr) {
      if (v->creating) {
        st.state = ExportState::kRecovering;
        st.message = "export being created";
      } else if (!v->error.empty()) {
        st.state = ExportState::kFailed;
        st.message = v->error;
      }
      return st;
    }
  }
  st.device_path = exp->block_device_path();
  st.dev_id = static_cast<int32_t>(exp->dev_id());
  st.copy_mode = std::string(ublk::CopyModeName(exp->copy_mode()));
  if (!workers.empty()) st.worker = workers[0]->id();
  const ublk::Export::State state = exp->state();
  switch (state) {
    case ublk::Export::State::kRunning: {
      std::set<int> degraded;
      for (ublk::Worker* w : workers) {
        if (w->buffer_pool_degraded()) degraded.insert(w->id());
      }
      if (degraded.empty()) {
        st.state = ExportState::kLive;
      } else {
        st.state = ExportState::kDegraded;
        st.message =
            absl::StrCat("buffer pool of worker ", absl::StrJoin(degraded, ", "),
                         " cannot be allocated (memory pressure): I/O is served from heap buffers");
      }
      break;
    }
    case ublk::Export::State::kCreated:
    case ublk::Export::State::kRecovering:
      st.state = ExportState::kRecovering;
      st.message = absl::StrCat("ublk device ", st.dev_id, " is ", ublk::Export::StateName(state));
      break;
    case ublk::Export::State::kDetached:
      st.state = ExportState::kFailed;
      st.message =
          absl::StrCat("ublk device ", st.dev_id, " detached: the plugin is shutting down");
      break;
    case ublk::Export::State::kFailed:
    case ublk::Export::State::kStopped:
    case ublk::Export::State::kDeleted:
      st.state = ExportState::kFailed;
      st.message = absl::StrCat("ublk device ", st.dev_id, " is ", ublk::Export::StateName(state));
      break;
  }
  return st;
}

void UblkVolumeBackend::Shutdown() {
  std::vector<std::pair<std::string, std::shared_ptr<Volume>>> volumes;
  {
    ublk::MutexLock lock(&mu_);
    if (shut_down_) return;
    shut_down_ = true;
    volumes.assign(volumes_.begin(), volumes_.end());
  }
  int detached = 0;
  for (auto& [id, v] : volumes) {
    ublk::MutexLock op(&v->op_mu);
    std::shared_ptr<ublk::Export> exp;
    std::vector<ublk::Worker*> workers;
    {
      ublk::MutexLock lock(&v->mu);
      exp = v->exp;
      workers = std::move(v->workers);
      v->workers.clear();
    }
    if (exp != nullptr && exp->state() == ublk::Export::State::kRunning) {
      absl::Status s = exp->Detach();
      if (!s.ok()) {
        LOG(WARNING) << "volume " << id << ": detach: " << s;
      } else {
        ++detached;
        const bool recoverable = (exp->device_info().flags & UBLK_F_USER_RECOVERY) != 0;
        LOG(INFO) << "volume " << id << ": ublk device " << exp->dev_id() << " detached"
                  << (recoverable ? ", left QUIESCED for the next process to recover"
                                  : " (no USER_RECOVERY: its I/O fails until re-created)");
      }
    }
    if (pool_ != nullptr) pool_->Release(workers);
  }
  if (!volumes.empty()) {
    LOG(INFO) << "ublk volume backend shut down: " << detached << " export(s) detached";
  }
}

}  // namespace ublk_csi
