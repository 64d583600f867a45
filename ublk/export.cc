#include "ublk/export.h"

#include <unistd.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "ublk/mutex.h"
#include "ublk/status_macros.h"

namespace ublk {

const char* Export::StateName(State state) {
  switch (state) {
    case State::kCreated:
      return "created";
    case State::kRunning:
      return "running";
    case State::kStopped:
      return "stopped";
    case State::kDeleted:
      return "deleted";
    case State::kRecovering:
      return "recovering";
    case State::kFailed:
      return "failed";
    case State::kDetached:
      return "detached";
  }
  return "?";
}

absl::Status ValidateExportOptions(const ExportOptions& o) {
  auto bad = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (o.logical_bs_shift < 9 || o.logical_bs_shift > 12) {
    return bad("logical_bs_shift ", o.logical_bs_shift, " out of range 9..12 (512..4096 bytes)");
  }
  if (o.physical_bs_shift < o.logical_bs_shift || o.physical_bs_shift > 16) {
    return bad("physical_bs_shift ", o.physical_bs_shift, " out of range ", o.logical_bs_shift,
               "..16");
  }
  const uint64_t lbs = uint64_t{1} << o.logical_bs_shift;
  if (o.size_bytes == 0 || o.size_bytes % lbs != 0) {
    return bad("size_bytes ", o.size_bytes,
               " must be a positive multiple of the logical block size ", lbs);
  }
  if (o.max_io_bytes < 4096 || o.max_io_bytes % 4096 != 0 || o.max_io_bytes > (32u << 20)) {
    return bad("max_io_bytes ", o.max_io_bytes, " must be a multiple of 4096 in 4096..32 MiB");
  }
  if (o.nr_queues == 0 || o.nr_queues > kMaxQueues) {
    return bad("nr_queues ", o.nr_queues, " out of range 1..", kMaxQueues);
  }
  if (o.queue_depth == 0 || o.queue_depth > kMaxQueueDepth) {
    return bad("queue_depth ", o.queue_depth, " out of range 1..", kMaxQueueDepth);
  }
  if (o.user_recovery_reissue && !o.user_recovery) {
    return bad("user_recovery_reissue needs user_recovery");
  }
  return absl::OkStatus();
}

uint64_t CopyModeFlags(CopyMode mode) {
  switch (mode) {
    case CopyMode::kUserCopy:
      return UBLK_F_USER_COPY;
    case CopyMode::kGetData:
      return UBLK_F_NEED_GET_DATA;
    case CopyMode::kZeroCopy:
      return UBLK_F_AUTO_BUF_REG;
  }
  return 0;
}

CopyMode CopyModeFor(CopyMode kernel_choice, uint64_t kernel_features, const Target& target) {
  if (kernel_choice != CopyMode::kZeroCopy || !target.needs_user_buffer()) return kernel_choice;
  return (kernel_features & UBLK_F_USER_COPY) != 0 ? CopyMode::kUserCopy : CopyMode::kGetData;
}

CopyMode CopyModeOfDevice(uint64_t device_flags) {
  if ((device_flags & UBLK_F_AUTO_BUF_REG) != 0) return CopyMode::kZeroCopy;
  if ((device_flags & UBLK_F_USER_COPY) != 0) return CopyMode::kUserCopy;
  return CopyMode::kGetData;
}

ublk_params ParamsFor(const ExportOptions& o, bool target_discard) {
  ublk_params p{};
  p.len = sizeof(p);
  p.types = UBLK_PARAM_TYPE_BASIC;
  p.basic.attrs = (o.write_cache ? UBLK_ATTR_VOLATILE_CACHE : 0u) | (o.fua ? UBLK_ATTR_FUA : 0u);
  p.basic.logical_bs_shift = o.logical_bs_shift;
  p.basic.physical_bs_shift = o.physical_bs_shift;
  p.basic.io_min_shift = o.physical_bs_shift;
  p.basic.io_opt_shift = o.physical_bs_shift;
  p.basic.max_sectors = o.max_io_bytes >> 9;
  p.basic.dev_sectors = o.size_bytes >> 9;
  if (o.discard && target_discard) {
    p.types |= UBLK_PARAM_TYPE_DISCARD;
    p.discard.discard_granularity = 1u << o.physical_bs_shift;
    p.discard.max_discard_sectors = UINT32_MAX >> 9;
    p.discard.max_write_zeroes_sectors = UINT32_MAX >> 9;
    p.discard.max_discard_segments = 1;
  }
  return p;
}

Export::Export(ControlDevice& control, std::vector<Worker*> workers, std::shared_ptr<Target> target,
               const DeviceInfo& info, CopyMode mode, uint64_t size, ExportOptions options)
    : control_(control),
      workers_(std::move(workers)),
      target_(std::move(target)),
      info_(info),
      copy_mode_(mode),
      options_(std::move(options)),
      size_bytes_(size) {}

absl::StatusOr<std::unique_ptr<Export>> Export::Create(ControlDevice& control,
                                                       std::vector<Worker*> workers,
                                                       std::shared_ptr<Target> target,
                                                       const ExportOptions& in) {
  if (workers.empty() || target == nullptr) {
    return absl::InvalidArgumentError("export: needs at least one worker and a target");
  }
  ExportOptions o = in;
  if (o.size_bytes == 0) o.size_bytes = target->size_bytes();
  RETURN_IF_ERROR(ValidateExportOptions(o));
  if (o.size_bytes > target->size_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat("export size ", o.size_bytes, " exceeds the ",
                                                   target->name(), " target's size ",
                                                   target->size_bytes()));
  }
  if (o.copy_mode == CopyMode::kZeroCopy && target->needs_user_buffer()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the ", target->name(),
                     " target needs its data in user memory and cannot serve zero copy "
                     "(use CopyModeFor to pick user copy or get-data)"));
  }
  DeviceInfo want;
  want.dev_id = o.dev_id;
  want.nr_hw_queues = o.nr_queues;
  want.queue_depth = o.queue_depth;
  want.max_io_buf_bytes = o.max_io_bytes;
  want.ublksrv_pid = getpid();
  want.ublksrv_flags = o.owner_tag;
  want.flags = CopyModeFlags(o.copy_mode) | (o.user_recovery ? UBLK_F_USER_RECOVERY : 0) |
               (o.user_recovery_reissue ? UBLK_F_USER_RECOVERY_REISSUE : 0);
  ASSIGN_OR_RETURN(DeviceInfo info, control.AddDevice(want));
  // Kernels drop flags they do not know (6.1 has no USER_COPY) instead of
  // failing: check that the device got what the data path relies on.
  const uint64_t missing = want.flags & ~info.flags;
  if (missing != 0) {
    absl::Status del = control.DeleteDevice(info.dev_id);
    if (!del.ok()) LOG(WARNING) << "cleanup after ADD_DEV without the flags asked for: " << del;
    return absl::FailedPreconditionError(absl::StrCat(
        "ublk device ", info.dev_id, ": the kernel did not grant flags 0x", absl::Hex(missing),
        " (asked 0x", absl::Hex(want.flags), ", got 0x", absl::Hex(info.flags), ")"));
  }
  // The kernel may lower the queue count (to the CPU count) and the I/O size.
  o.nr_queues = info.nr_hw_queues;
  o.queue_depth = info.queue_depth;
  if (info.max_io_buf_bytes != 0 && info.max_io_buf_bytes < o.max_io_bytes) {
    o.max_io_bytes = info.max_io_buf_bytes;
  }
  absl::Status s = control.SetParams(info.dev_id, ParamsFor(o, target->supports_discard()));
  if (!s.ok()) {
    absl::Status del = control.DeleteDevice(info.dev_id);
    if (!del.ok()) LOG(WARNING) << "cleanup after failed SET_PARAMS: " << del;
    return s;
  }
  LOG(INFO) << "ublk device " << info.dev_id << ": created, " << o.size_bytes << " bytes, "
            << info.nr_hw_queues << " queue(s) x " << info.queue_depth << ", "
            << CopyModeName(o.copy_mode) << ", target " << target->name();
  return std::unique_ptr<Export>(new Export(control, std::move(workers), std::move(target), info,
                                            o.copy_mode, o.size_bytes, o));
}

namespace {

// START_USER_RECOVERY, resuming whatever a killed predecessor left.
absl::Status StartRecovery(ControlDevice& control, const DeviceInfo& info, const RecoverOptions& ro,
                           RecoverStats& stats) {
  RealClock real_clock;
  const Clock& clock = ro.clock != nullptr ? *ro.clock : real_clock;
  const uint32_t dev_id = info.dev_id;
  const absl::Time deadline = clock.Now() + ro.release_wait;
  absl::Duration backoff = ro.backoff_initial;
  bool rearmed = false;
  bool logged_einval = false;
  auto rearm = [&]() -> absl::Status {
    absl::Status r = control.RearmRecovery(dev_id, info.nr_hw_queues, info.queue_depth);
    if (r.ok()) {
      rearmed = true;
      ++stats.rearms;
    }
    return r;
  };
  if (ro.rearm_multi_queue && info.nr_hw_queues > 1) {
    absl::Status r = rearm();
    if (!r.ok() && !absl::IsUnavailable(r)) return r;
  }
  for (;;) {
    absl::Status s = control.StartUserRecovery(dev_id);
    if (s.ok()) return s;
    if (absl::IsInvalidArgument(s) && !rearmed) {
      if (!logged_einval) {
        logged_einval = true;
        LOG(WARNING) << "ublk device " << dev_id << ": START_USER_RECOVERY refused (" << s.message()
                     << "): a previous recovery was cut short after its START; "
                     << "re-arming";
      }
      absl::Status r = rearm();
      if (r.ok()) continue;
      if (!absl::IsUnavailable(r)) return r;
      s = r;
    }
    if (!absl::IsUnavailable(s)) return s;
    if (clock.Now() >= deadline) {
      stats.gave_up = true;
      return absl::FailedPreconditionError(absl::StrCat(
          "ublk device ", dev_id, " cannot be recovered: its char device is still held ",
          absl::FormatDuration(ro.release_wait),
          " later (on Linux before 6.16 a server killed in the middle of its FETCHes never "
          "releases it); the device is left as it is, never deleted: see README \"A device "
          "left unrecoverable\" (last error: ",
          s.message(), ")"));
    }
    ++stats.busy_retries;
    clock.SleepFor(backoff);
    backoff = std::min(backoff * 2, ro.backoff_max);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Export>> Export::Recover(
    ControlDevice& control, std::vector<Worker*> workers, std::shared_ptr<Target> target,
    uint32_t dev_id, const RecoverOptions& recover, RecoverStats* stats_out) {
  RecoverStats ignored;
  RecoverStats& stats = stats_out != nullptr ? *stats_out : ignored;
  if (workers.empty() || target == nullptr) {
    return absl::InvalidArgumentError("export: needs at least one worker and a target");
  }
  ASSIGN_OR_RETURN(DeviceInfo info, control.GetDeviceInfo(dev_id));
  if ((info.flags & UBLK_F_USER_RECOVERY) == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("ublk device ", dev_id, " was created without UBLK_F_USER_RECOVERY"));
  }
  if (info.state != UBLK_S_DEV_QUIESCED) {
    return absl::FailedPreconditionError(absl::StrCat("ublk device ", dev_id, " is ",
                                                      DeviceStateName(info.state),
                                                      ", not QUIESCED: nothing to recover"));
  }
  if (CopyModeOfDevice(info.flags) == CopyMode::kZeroCopy && target->needs_user_buffer()) {
    return absl::FailedPreconditionError(
        absl::StrCat("ublk device ", dev_id, " was created for zero copy, which the ",
                     target->name(), " target cannot serve (it needs its data in user memory)"));
  }
  ASSIGN_OR_RETURN(ublk_params params, control.GetParams(dev_id));
  const uint64_t size = params.basic.dev_sectors << 9;
  if (size > target->size_bytes()) {
    return absl::FailedPreconditionError(absl::StrCat("ublk device ", dev_id, " has ", size,
                                                      " bytes but its ", target->name(),
                                                      " target only ", target->size_bytes()));
  }
  RETURN_IF_ERROR(StartRecovery(control, info, recover, stats));
  ExportOptions o;
  o.dev_id = dev_id;
  o.size_bytes = size;
  o.nr_queues = info.nr_hw_queues;
  o.queue_depth = info.queue_depth;
  o.user_recovery = true;
  o.user_recovery_reissue = (info.flags & UBLK_F_USER_RECOVERY_REISSUE) != 0;
  // The device's flags were fixed at ADD_DEV: serve it in the mode it was
  // made for, whatever this process would pick for a new device.
  o.copy_mode = CopyModeOfDevice(info.flags);
  std::unique_ptr<Export> e(
      new Export(control, std::move(workers), std::move(target), info, o.copy_mode, size, o));
  ublk::MutexLock lock(&e->mu_);
  e->state_ = State::kRecovering;
  absl::Status s = e->ServeQueues();
  if (s.ok()) s = control.EndUserRecovery(dev_id, getpid());
  if (!s.ok()) {
    e->RemoveQueues(absl::ZeroDuration());
    e->state_ = State::kFailed;
    return s;
  }
  e->state_ = State::kRunning;
  // The caller logs the volume's recovery; this line is for debugging only.
  VLOG(1) << "ublk device " << dev_id << ": recovered, " << CopyModeName(o.copy_mode);
  return e;
}

Export::~Export() {
  ublk::MutexLock lock(&mu_);
  if (!queues_.empty()) {
    LOG(INFO) << "ublk device " << info_.dev_id << ": export destroyed while " << StateName(state_)
              << ", detaching its queues";
    RemoveQueues(absl::ZeroDuration());
  }
}

Export::State Export::state() const {
  ublk::MutexLock lock(&mu_);
  return state_;
}

uint64_t Export::size_bytes() const {
  ublk::MutexLock lock(&mu_);
  return size_bytes_;
}

absl::Status Export::WrongState(absl::string_view op) const {
  return absl::FailedPreconditionError(absl::StrCat("ublk device ", info_.dev_id, ": cannot ", op,
                                                    " an export that is ", StateName(state_)));
}

absl::Status Export::ServeQueues() {
  for (uint16_t q = 0; q < info_.nr_hw_queues; ++q) {
    ASSIGN_OR_RETURN(auto channel, control_.OpenQueue(info_.dev_id, q, info_.queue_depth));
    Worker* w = workers_[q % workers_.size()];
    ASSIGN_OR_RETURN(Worker::QueueId id,
                     w->AddQueue(QueueConfig{std::move(channel), target_, copy_mode_}));
    queues_.emplace_back(w, id);
  }
  return absl::OkStatus();
}

bool Export::RemoveQueues(absl::Duration timeout) {
  bool drained = true;
  for (auto& [worker, id] : queues_) {
    auto r = worker->RemoveQueue(id, timeout);
    if (!r.ok()) {
      LOG(WARNING) << "ublk device " << info_.dev_id << ": " << r.status();
      drained = false;
    } else {
      drained &= *r;
    }
  }
  queues_.clear();
  return drained;
}

absl::Status Export::Start() {
  ublk::MutexLock lock(&mu_);
  if (state_ != State::kCreated) return WrongState("start");
  absl::Status s = ServeQueues();
  if (s.ok()) s = control_.StartDevice(info_.dev_id, getpid());
  if (!s.ok()) {
    RemoveQueues(absl::ZeroDuration());
    state_ = State::kFailed;
    return s;
  }
  state_ = State::kRunning;
  LOG(INFO) << "ublk device " << info_.dev_id << ": started as " << block_device_path();
  return absl::OkStatus();
}

absl::Status Export::Stop() {
  ublk::MutexLock lock(&mu_);
  if (state_ != State::kRunning) return WrongState("stop");
  absl::Status s = control_.StopDevice(info_.dev_id);
  const bool drained = RemoveQueues(s.ok() ? options_.stop_drain_timeout : absl::ZeroDuration());
  if (!s.ok()) {
    state_ = State::kFailed;
    return s;
  }
  if (!drained) {
    LOG(WARNING) << "ublk device " << info_.dev_id << ": queues did not drain within "
                 << options_.stop_drain_timeout << " after STOP_DEV";
  }
  state_ = State::kStopped;
  return absl::OkStatus();
}

absl::Status Export::Detach() {
  ublk::MutexLock lock(&mu_);
  if (state_ != State::kRunning) return WrongState("detach");
  RemoveQueues(absl::ZeroDuration());
  state_ = State::kDetached;
  return absl::OkStatus();
}

absl::Status Export::Delete() {
  ublk::MutexLock lock(&mu_);
  if (state_ == State::kRunning || state_ == State::kRecovering || state_ == State::kDeleted) {
    return WrongState("delete");
  }
  RemoveQueues(absl::ZeroDuration());
  RETURN_IF_ERROR(control_.DeleteDevice(info_.dev_id));
  state_ = State::kDeleted;
  LOG(INFO) << "ublk device " << info_.dev_id << ": deleted";
  return absl::OkStatus();
}

absl::Status Export::Resize(uint64_t new_size) {
  ublk::MutexLock lock(&mu_);
  if (state_ != State::kRunning && state_ != State::kCreated) return WrongState("resize");
  ExportOptions o = options_;
  o.size_bytes = new_size;
  RETURN_IF_ERROR(ValidateExportOptions(o));
  if (new_size > target_->size_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat("ublk device ", info_.dev_id, ": new size ",
                                                   new_size, " exceeds the target's ",
                                                   target_->size_bytes()));
  }
  if (state_ == State::kCreated) {
    RETURN_IF_ERROR(control_.SetParams(info_.dev_id, ParamsFor(o, target_->supports_discard())));
  } else {
    RETURN_IF_ERROR(control_.UpdateSize(info_.dev_id, new_size >> 9));
  }
  size_bytes_ = new_size;
  return absl::OkStatus();
}

}  // namespace ublk
