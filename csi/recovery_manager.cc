#include "csi/recovery_manager.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "ublk/mutex.h"

namespace ublk_csi {
namespace {

constexpr const char* kGaugeStates[] = {"absent",   "recovering", "live",
                                        "degraded", "failed",     "pending"};

}  // namespace

const char* RecoveryManager::OutcomeName(Outcome outcome) {
  switch (outcome) {
    case Outcome::kRecovered:
      return "recovered";
    case Outcome::kRecreated:
      return "recreated";
    case Outcome::kFailed:
      return "failed";
  }
  return "unknown";
}

RecoveryManager::RecoveryManager(VolumeManager* manager, Health* health,
                                 prometheus::Registry* registry, RecoveryOptions options)
    : manager_(manager),
      health_(health),
      options_(std::move(options)),
      clock_(options_.clock != nullptr ? *options_.clock : real_clock_) {
  if (registry != nullptr) {
    recoveries_ = &prometheus::BuildCounter()
                       .Name("ublk_csi_recoveries_total")
                       .Help(
                           "Volumes brought back after a plugin start, by outcome: recovered "
                           "(QUIESCED device re-attached), recreated (device re-created from "
                           "the record), failed")
                       .Register(*registry);
    for (Outcome o : {Outcome::kRecovered, Outcome::kRecreated, Outcome::kFailed}) {
      recoveries_->Add({{"outcome", OutcomeName(o)}});
    }
    duration_ = &prometheus::BuildHistogram()
                     .Name("ublk_csi_recovery_duration_seconds")
                     .Help("Time to bring one volume's export back after a plugin start")
                     .Register(*registry)
                     .Add({}, prometheus::Histogram::BucketBoundaries{0.005, 0.01, 0.05, 0.1, 0.25,
                                                                      0.5, 1, 2.5, 5, 10, 30, 60});
    exports_ = &prometheus::BuildGauge()
                    .Name("ublk_csi_exports")
                    .Help(
                        "Volumes with a record on this node, by export state (pending: "
                        "waiting for recovery after a plugin start)")
                    .Register(*registry);
    for (const char* s : kGaugeStates) exports_->Add({{"state", s}});
    concurrency_gauge_ = &prometheus::BuildGauge()
                              .Name("ublk_csi_recovery_concurrency")
                              .Help(
                                  "Volumes the recovery after a plugin start may bring back at "
                                  "once: --recovery-concurrency, lower while memory is tight")
                              .Register(*registry)
                              .Add({});
    concurrency_gauge_->Set(options_.concurrency);
    throttles_ = &prometheus::BuildCounter()
                      .Name("ublk_csi_recovery_memory_throttles_total")
                      .Help(
                          "Times the recovery lowered its concurrency because memory was tight "
                          "(headroom below the margin, or memory.high throttling)")
                      .Register(*registry)
                      .Add({});
    retries_ = &prometheus::BuildCounter()
                    .Name("ublk_csi_recovery_retries_total")
                    .Help(
                        "Recoveries tried again after failing with UNAVAILABLE (cluster "
                        "unreachable), by result: recovered, unavailable (tried again later), "
                        "busy (a call held the volume: tried again later), failed (another "
                        "error: given up), dropped (no longer staged)")
                    .Register(*registry);
    for (const char* r : {"recovered", "unavailable", "busy", "failed", "dropped"}) {
      retries_->Add({{"result", r}});
    }
  }
}

RecoveryManager::~RecoveryManager() { Stop(); }

void RecoveryManager::Start() {
  std::vector<std::string> picked;
  for (const VolumeStatus& v : manager_->Status()) {
    absl::StatusOr<records::VolumeRecord> rec = manager_->GetRecord(v.volume_id);
    if (!rec.ok() || rec->state() != records::VolumeRecord::READY) continue;
    if (rec->staged_path().empty() && rec->published_paths_size() == 0) continue;
    picked.push_back(v.volume_id);
  }
  int threads = 0;
  {
    ublk::MutexLock lock(&mu_);
    if (started_) return;
    started_ = true;
    order_ = picked;
    for (const std::string& id : order_) states_[id] = VState::kPending;
    progress_.total = static_cast<int>(order_.size());
    started_at_ = clock_.Now();
    last_progress_log_ = started_at_;
    // Pressure from before this start is the budget's business (it released
    // idle pools), not a reason to slow this recovery down.
    if (options_.budget != nullptr) seen_epoch_ = options_.budget->pressure_epoch();
    if (order_.empty()) {
      progress_.finished = true;
    } else {
      threads = std::max(1, std::min(options_.concurrency, progress_.total));
      running_ = threads;
    }
  }
  manager_->SetGate(this);
  if (threads == 0) {
    LOG(INFO) << "recovery: no staged or published volumes";
    if (options_.on_done) options_.on_done(0, 0);
    health_->SetRecoveryDone();
    RefreshExportGauge();
    cv_.NotifyAll();
    return;
  }
  health_->SetRecoveryPending(absl::StrCat("0 of ", picked.size(), " volumes"));
  {
    ublk::MutexLock lock(&threads_mu_);
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Run(); });
  }
  // After the threads start: a log line can take tens of ms to write (every
  // glog line goes out under one lock), and a gauge refresh walks every
  // volume; neither should delay the first volume.
  LOG(INFO) << "recovery: " << picked.size() << " staged or published volume(s), " << threads
            << " at a time";
  RefreshExportGauge();
}

void RecoveryManager::Stop() {
  {
    ublk::MutexLock lock(&mu_);
    if (!progress_.finished && started_ && !stopping_) {
      LOG(INFO) << "recovery: stopping with " << progress_.done << " of " << progress_.total
                << " volumes done; the rest stay as the kernel has them";
    }
    stopping_ = true;
  }
  cv_.NotifyAll();
  std::vector<std::thread> threads;
  {
    ublk::MutexLock lock(&threads_mu_);
    threads.swap(threads_);
    threads_closed_ = true;
  }
  for (std::thread& t : threads) t.join();
}

bool RecoveryManager::WaitDone(absl::Duration timeout) {
  ublk::MutexLock lock(&mu_);
  cv_.WaitFor(lock, absl::ToChronoNanoseconds(timeout),
              [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
                return progress_.finished || (stopping_ && running_ == 0);
              });
  return progress_.finished;
}

absl::Status RecoveryManager::CheckServing(const std::string& volume_id) {
  ublk::MutexLock lock(&mu_);
  auto it = states_.find(volume_id);
  if (it == states_.end() || it->second == VState::kDone) return absl::OkStatus();
  return absl::UnavailableError(
      absl::StrCat("volume ", volume_id, " is being recovered after a plugin restart (",
                   progress_.done, " of ", progress_.total, " volumes done); retry later"));
}

RecoveryManager::Progress RecoveryManager::progress() const {
  ublk::MutexLock lock(&mu_);
  Progress p = progress_;
  p.stopped = stopping_ && !progress_.finished;
  return p;
}

std::optional<RecoveryManager::Outcome> RecoveryManager::OutcomeOf(
    const std::string& volume_id) const {
  ublk::MutexLock lock(&mu_);
  auto it = outcomes_.find(volume_id);
  if (it == outcomes_.end()) return std::nullopt;
  return it->second;
}

void RecoveryManager::RefreshExportGauge() {
  if (exports_ == nullptr) return;
  // Whole refreshes one at a time: Start()'s refresh, computed while the
  // first volumes were still pending and set after the last thread's, left
  // the gauge saying 0 live with every volume served (a unit test under
  // ctest -j2 load caught it).
  ublk::MutexLock refresh(&gauge_mu_);
  std::map<std::string, int> counts;
  for (const char* s : kGaugeStates) counts[s] = 0;
  std::vector<VolumeStatus> all = manager_->Status();
  ublk::MutexLock lock(&mu_);
  for (const VolumeStatus& v : all) {
    auto it = states_.find(v.volume_id);
    if (it != states_.end() && it->second != VState::kDone) {
      ++counts["pending"];
    } else {
      ++counts[ExportStateName(v.export_status.state)];
    }
  }
  for (const auto& [state, n] : counts) exports_->Add({{"state", state}}).Set(n);
}

absl::Status RecoveryManager::ServingStatus() const {
  const std::vector<VolumeStatus> all = manager_->Status();
  int should = 0, failed = 0, unrecovered = 0;
  std::string example;
  ublk::MutexLock lock(&mu_);
  for (const VolumeStatus& v : all) {
    auto it = states_.find(v.volume_id);
    const bool pending = it != states_.end() && it->second != VState::kDone;
    if (v.staged_path.empty() && v.published == 0 && !pending) continue;
    ++should;
    const ExportState st = v.export_status.state;
    if (pending || st == ExportState::kRecovering) {
      ++unrecovered;
    } else if (st == ExportState::kFailed || st == ExportState::kAbsent) {
      ++failed;
      if (example.empty()) {
        example = absl::StrCat(
            v.volume_id, ": ",
            v.export_status.message.empty() ? ExportStateName(st) : v.export_status.message);
      }
    }
  }
  if (failed == 0 && unrecovered == 0) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat(
      failed + unrecovered, " of ", should, " staged or published volumes not serving: ", failed,
      " failed, ", unrecovered, " not recovered yet", example.empty() ? "" : " (e.g. ", example,
      example.empty() ? "" : ")"));
}

int RecoveryManager::AllowedLocked() {
  const int full = std::max(1, options_.concurrency);
  if (options_.budget == nullptr) return full;
  const int low = std::clamp(options_.tight_concurrency, 1, full);
  const absl::Time now = clock_.Now();
  const uint64_t epoch = options_.budget->pressure_epoch();
  if (epoch != seen_epoch_) {  // memory.high throttled us, or headroom ran out
    hold_until_ = now + options_.pressure_hold;
    seen_epoch_ = epoch;
  }
  const bool tight = options_.budget->tight() || now < hold_until_;
  if (tight != throttled_) {
    throttled_ = tight;
    if (tight) {
      LOG(WARNING) << "recovery: memory is tight (headroom "
                   << (options_.budget->limited()
                           ? absl::StrCat(options_.budget->headroom(), " bytes")
                           : std::string("unlimited"))
                   << ", " << options_.budget->high_events()
                   << " memory.high event(s) seen); recovering at most " << low
                   << " volume(s) at a time instead of " << full << " (" << progress_.done << " of "
                   << progress_.total << " done)";
      if (throttles_ != nullptr) throttles_->Increment();
    } else {
      LOG(INFO) << "recovery: memory headroom restored; recovering " << full
                << " volume(s) at a time again (" << progress_.done << " of " << progress_.total
                << " done)";
    }
    if (concurrency_gauge_ != nullptr) concurrency_gauge_->Set(tight ? low : full);
  }
  return tight ? low : full;
}

absl::StatusOr<ExportInfo> RecoveryManager::RecoverOne(const std::string& volume_id) {
  const absl::Time give_up = clock_.Now() + options_.busy_retry_for;
  for (;;) {
    absl::StatusOr<ExportInfo> info = manager_->RecoverExport(volume_id);
    if (info.ok() || info.status().code() != absl::StatusCode::kAborted) return info;
    // A call on this volume holds its lock (it cannot be a NodeStage: the
    // gate turns those away; e.g. a NodeUnpublish). Wait for it, briefly.
    {
      ublk::MutexLock lock(&mu_);
      if (stopping_ || clock_.Now() >= give_up) return info;
    }
    clock_.SleepFor(options_.busy_retry_interval);
  }
}

void RecoveryManager::Run() {
  for (;;) {
    std::string id;
    {
      ublk::MutexLock lock(&mu_);
      for (;;) {
        if (stopping_ || next_ >= order_.size()) break;
        if (in_progress_ < AllowedLocked()) {
          id = order_[next_++];
          states_[id] = VState::kInProgress;
          ++in_progress_;
          break;
        }
        // Held back by memory pressure: a volume finishing, Stop() or the
        // next look at the budget ends the wait.
        cv_.WaitUntil(lock, std::chrono::steady_clock::now() +
                                absl::ToChronoNanoseconds(options_.throttle_poll));
      }
      if (id.empty()) break;
    }
    const absl::Time t0 = clock_.Now();
    absl::StatusOr<ExportInfo> info = RecoverOne(id);
    Outcome outcome = Outcome::kFailed;
    if (info.ok()) {
      outcome = info->recovered ? Outcome::kRecovered : Outcome::kRecreated;
      VLOG(1) << "volume " << id << ": " << OutcomeName(outcome) << " as " << info->device_path;
    } else if (info.status().code() == absl::StatusCode::kUnavailable &&
               options_.unavailable_retry_interval > absl::ZeroDuration()) {
      LOG(ERROR) << "volume " << id << ": recovery failed, volume marked failed: " << info.status()
                 << "; trying again every " << options_.unavailable_retry_interval;
      ublk::MutexLock lock(&mu_);
      retry_.push_back(id);
    } else {
      // The one line for this volume; its status (NodeGetVolumeStats) and
      // the failed counter carry it from here.
      LOG(ERROR) << "volume " << id << ": recovery failed, volume marked failed: " << info.status();
    }
    Finish(id, outcome, clock_.Now() - t0);
  }
  bool all_done = false, retry = false;
  Progress p;
  absl::Duration took;
  {
    ublk::MutexLock lock(&mu_);
    all_done = --running_ == 0 && progress_.done == progress_.total;
    retry = all_done && !retry_.empty() && !stopping_;
    p = progress_;
    took = clock_.Now() - started_at_;
  }
  if (all_done) {
    LOG(INFO) << "recovery done: " << p.total << " volume(s) in " << took << ": " << p.recovered
              << " recovered, " << p.recreated << " recreated, " << p.failed << " failed";
    if (options_.on_done) options_.on_done(p.total, p.failed);
    // Health and the gauge first: whoever WaitDone() wakes sees them final.
    health_->SetRecoveryDone();
    RefreshExportGauge();
    if (retry) {
      ublk::MutexLock lock(&threads_mu_);
      if (!threads_closed_) threads_.emplace_back([this] { RetryUnavailable(); });
    }
    ublk::MutexLock lock(&mu_);
    progress_.finished = true;
  }
  cv_.NotifyAll();
}

bool RecoveryManager::SleepUnlessStopping(absl::Duration d) {
  const absl::Time until = clock_.Now() + d;
  for (;;) {
    {
      ublk::MutexLock lock(&mu_);
      if (stopping_) return false;
    }
    const absl::Duration left = until - clock_.Now();
    if (left <= absl::ZeroDuration()) return true;
    clock_.SleepFor(std::min(left, absl::Milliseconds(100)));
  }
}

void RecoveryManager::RetryUnavailable() {
  for (int attempt = 1;; ++attempt) {
    if (!SleepUnlessStopping(options_.unavailable_retry_interval)) return;
    std::vector<std::string> ids;
    {
      ublk::MutexLock lock(&mu_);
      ids.swap(retry_);
    }
    std::vector<std::string> again;
    for (const std::string& id : ids) {
      absl::StatusOr<ExportInfo> info = RecoverOne(id);
      const char* result = "recovered";
      if (info.ok()) {
        LOG(INFO) << "volume " << id << ": recovered on retry " << attempt << " as "
                  << info->device_path;
        const Outcome outcome = info->recovered ? Outcome::kRecovered : Outcome::kRecreated;
        if (recoveries_ != nullptr)
          recoveries_->Add({{"outcome", OutcomeName(outcome)}}).Increment();
        ublk::MutexLock lock(&mu_);
        outcomes_[id] = outcome;
        --progress_.failed;
        ++(outcome == Outcome::kRecovered ? progress_.recovered : progress_.recreated);
      } else if (info.status().code() == absl::StatusCode::kUnavailable ||
                 info.status().code() == absl::StatusCode::kAborted) {
        // Still unreachable, or a call (e.g. a NodeUnstage) held the volume
        // past RecoverOne's patience: the next round decides. The ERROR
        // line was written once, at the first failure.
        result = info.status().code() == absl::StatusCode::kAborted ? "busy" : "unavailable";
        VLOG(1) << "volume " << id << ": retry " << attempt << ": " << info.status();
        again.push_back(id);
      } else if (info.status().code() == absl::StatusCode::kFailedPrecondition &&
                 info.status().message().find(kNotStagedNow) != absl::string_view::npos) {
        result = "dropped";
        LOG(INFO) << "volume " << id << ": no longer staged or published; not retried";
      } else {
        result = "failed";
        LOG(ERROR) << "volume " << id << ": recovery retry " << attempt
                   << " failed, not tried again: " << info.status();
      }
      if (retries_ != nullptr) retries_->Add({{"result", result}}).Increment();
    }
    bool done = false;
    {
      ublk::MutexLock lock(&mu_);
      retry_.insert(retry_.end(), again.begin(), again.end());
      done = retry_.empty();
    }
    RefreshExportGauge();
    if (done) return;
  }
}

void RecoveryManager::Finish(const std::string& volume_id, Outcome outcome, absl::Duration took) {
  if (recoveries_ != nullptr) recoveries_->Add({{"outcome", OutcomeName(outcome)}}).Increment();
  if (duration_ != nullptr) duration_->Observe(absl::ToDoubleSeconds(took));
  int done = 0, total = 0;
  std::string progress_line;
  {
    ublk::MutexLock lock(&mu_);
    states_[volume_id] = VState::kDone;
    outcomes_[volume_id] = outcome;
    ++progress_.done;
    switch (outcome) {
      case Outcome::kRecovered:
        ++progress_.recovered;
        break;
      case Outcome::kRecreated:
        ++progress_.recreated;
        break;
      case Outcome::kFailed:
        ++progress_.failed;
        break;
    }
    done = progress_.done;
    total = progress_.total;
    --in_progress_;
    const absl::Time now = clock_.Now();
    if (done < total && now - last_progress_log_ >= options_.progress_log_interval) {
      last_progress_log_ = now;
      progress_line = absl::StrCat("recovery: ", done, " of ", total, " volume(s) done in ",
                                   absl::FormatDuration(now - started_at_), " (",
                                   progress_.recovered, " recovered, ", progress_.recreated,
                                   " recreated, ", progress_.failed, " failed)");
    }
  }
  if (!progress_line.empty()) LOG(INFO) << progress_line;
  cv_.NotifyAll();  // a thread held back by the memory limit may go on
  if (done < total) health_->SetRecoveryPending(absl::StrCat(done, " of ", total, " volumes"));
}

}  // namespace ublk_csi
