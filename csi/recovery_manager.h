// RecoveryManager: brings every staged or published volume's export back
// after the plugin starts (a QUIESCED device left by the previous process is
// re-attached; a device gone after a node reboot is re-created from the
// record with the same id and backing file), in the background, with bounded
// concurrency, while Health says "not ready" and NodeStage/NodePublish of a
// volume not yet done answer UNAVAILABLE (it is the VolumeManager's gate).
// One volume that cannot be recovered is marked failed (one ERROR line, the
// failed outcome counter, VolumeCondition abnormal through the backend's
// status); the others go on.
//
// Threads: owns up to `concurrency` recovery threads between Start() and
// Stop(); every public method is thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "csi/health.h"
#include "csi/volume_manager.h"
#include "ublk/clock.h"
#include "ublk/memory_budget.h"
#include "ublk/mutex.h"

namespace prometheus {
class Registry;
class Counter;
class Gauge;
class Histogram;
template <typename T>
class Family;
}  // namespace prometheus

namespace ublk_csi {

// --recovery-concurrency's default. 32 rather than 8: on 7.x, where each
// re-attach waits longer on the kernel, 256 volumes serve again 0.2-0.4 s
// sooner after kill -9 (bench/README.md, sessions 11-12); on 6.12 it costs
// nothing, and under a cgroup limit the budget still drops it to
// tight_concurrency.
inline constexpr int kDefaultRecoveryConcurrency = 32;

struct RecoveryOptions {
  // Volumes recovered at once. Each one holds a worker assignment and, while
  // it re-attaches, kernel commands in flight: memory grows with this, not
  // with the number of volumes.
  int concurrency = kDefaultRecoveryConcurrency;
  // A volume whose lock is held by a concurrent call (ABORTED) is tried again
  // every `busy_retry_interval` for at most `busy_retry_for`, then failed.
  absl::Duration busy_retry_interval = absl::Milliseconds(20);
  absl::Duration busy_retry_for = absl::Seconds(30);
  // Nullable: a RealClock. Every deadline, duration and retry wait uses it.
  const ublk::Clock* clock = nullptr;
  // Called once when every volume has an outcome (before Health turns
  // ready), e.g. to reset the crash-loop guard.
  std::function<void(int total, int failed)> on_done;
  // Nullable (no budget: always `concurrency`); must outlive the manager.
  // While memory is tight (budget->tight(): headroom below its margin) or
  // for `pressure_hold` after its pressure epoch moved (memory.high
  // throttled the process), at most `tight_concurrency` volumes are
  // recovered at once: each one re-attaching costs kernel commands and
  // buffer memory, and the recovery must not be what tips the process into
  // its cgroup's OOM killer. One log line per transition;
  // ublk_csi_recovery_concurrency shows the limit in force.
  const ublk::MemoryBudget* budget = nullptr;
  int tight_concurrency = 1;
  absl::Duration pressure_hold = absl::Seconds(2);
  // How often a recovery thread held back by the limit looks at the budget
  // again (the budget does not signal; a volume finishing wakes it too).
  absl::Duration throttle_poll = absl::Milliseconds(20);
  // At most one INFO progress line ("recovery: N of M volume(s) done ...")
  // per interval; a volume's own lines are debug (--log-level=debug) unless
  // it fails. Every glog line is written under one process-wide lock: a
  // line or three per volume serialized a mass recovery behind the log.
  absl::Duration progress_log_interval = absl::Seconds(1);
  // A volume whose recovery failed with UNAVAILABLE (its Ceph cluster did
  // not answer: monitors down, network) is tried again every this long
  // after the first pass, by one thread, until it recovers, fails another
  // way, or is no longer staged or published (kubelet does not repeat a
  // NodeStage after a plugin restart: without this the volume stayed
  // failed, its I/O parked in the kernel, until the plugin restarted).
  // Zero: no retries.
  absl::Duration unavailable_retry_interval = absl::Seconds(5);
};

class RecoveryManager final : public VolumeGate {
 public:
  enum class Outcome { kRecovered, kRecreated, kFailed };
  struct Progress {
    int total = 0;  // volumes picked for recovery
    int done = 0;   // with an outcome
    int recovered = 0;
    int recreated = 0;
    int failed = 0;
    bool finished = false;  // every volume has an outcome
    bool stopped = false;   // Stop() ran before that
  };

  // `manager`, `health` and `registry` (may be null) must outlive this.
  RecoveryManager(VolumeManager* manager, Health* health, prometheus::Registry* registry,
                  RecoveryOptions options = {});
  ~RecoveryManager() override;  // Stop()
  RecoveryManager(const RecoveryManager&) = delete;
  RecoveryManager& operator=(const RecoveryManager&) = delete;

  // Call once, after VolumeManager::Load(): installs this as the manager's
  // gate, picks the volumes whose records are staged or published, sets
  // Health to "recovering: 0 of N volumes" (or done when N is 0) and starts
  // the threads. Returns at once.
  void Start();
  // For SIGTERM: no volume is started after this; waits only for the ones
  // in progress (each bounded by the backend's own timeouts). Volumes never
  // started stay UNAVAILABLE and Health stays not ready. Idempotent.
  void Stop();
  // True once every volume has an outcome, false on timeout or after Stop().
  bool WaitDone(absl::Duration timeout);

  // VolumeGate: UNAVAILABLE ("volume X is being recovered after a plugin
  // restart: N of M done; retry") until the volume has an outcome; OK after
  // (a failed volume may be staged again: the failure is the backend's to
  // repeat or to have fixed), and for volumes that were not picked.
  absl::Status CheckServing(const std::string& volume_id) override;

  Progress progress() const;
  // For Health::SetServingCheck: OK when every volume whose record says it
  // is staged or published is served (its export live or degraded);
  // otherwise Unavailable "N of M staged or published volumes not serving:
  // F failed, U not recovered yet (e.g. vol-a: <why>)".
  absl::Status ServingStatus() const;
  // The outcome of one volume, if it has one.
  std::optional<Outcome> OutcomeOf(const std::string& volume_id) const;
  // Sets ublk_csi_exports{state=absent|recovering|live|degraded|failed|pending}
  // from the manager's current view (done when recovery starts and ends, and
  // by main() before every /metrics scrape). Thread-safe.
  void RefreshExportGauge();

  static const char* OutcomeName(Outcome outcome);

 private:
  enum class VState { kPending, kInProgress, kDone };
  void Run();
  absl::StatusOr<ExportInfo> RecoverOne(const std::string& volume_id);
  void Finish(const std::string& volume_id, Outcome outcome, absl::Duration took);
  // The retry thread: tries `retry_` again every unavailable_retry_interval
  // until it is empty or Stop().
  void RetryUnavailable();
  // Sleeps `d` through the clock in short steps; false once Stop() ran.
  bool SleepUnlessStopping(absl::Duration d);
  // The volumes that may be in progress now: concurrency, or
  // tight_concurrency under memory pressure. Logs and counts a transition.
  int AllowedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  VolumeManager* const manager_;
  Health* const health_;
  const RecoveryOptions options_;
  const ublk::RealClock real_clock_;
  const ublk::Clock& clock_;

  prometheus::Family<prometheus::Counter>* recoveries_ = nullptr;
  prometheus::Histogram* duration_ = nullptr;
  prometheus::Family<prometheus::Gauge>* exports_ = nullptr;
  prometheus::Gauge* concurrency_gauge_ = nullptr;
  prometheus::Counter* throttles_ = nullptr;
  prometheus::Family<prometheus::Counter>* retries_ = nullptr;

  // Serializes RefreshExportGauge (taken before mu_, never under it).
  ublk::Mutex gauge_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  mutable ublk::Mutex mu_;
  ublk::CondVar cv_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::string> order_ ABSL_GUARDED_BY(mu_);
  size_t next_ ABSL_GUARDED_BY(mu_) = 0;
  int running_ ABSL_GUARDED_BY(mu_) = 0;         // threads still in Run()
  int in_progress_ ABSL_GUARDED_BY(mu_) = 0;     // volumes being recovered now
  bool throttled_ ABSL_GUARDED_BY(mu_) = false;  // under memory pressure
  uint64_t seen_epoch_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time hold_until_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::map<std::string, VState> states_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Outcome> outcomes_ ABSL_GUARDED_BY(mu_);
  Progress progress_ ABSL_GUARDED_BY(mu_);
  absl::Time started_at_ ABSL_GUARDED_BY(mu_);
  absl::Time last_progress_log_ ABSL_GUARDED_BY(mu_);
  // Failed with UNAVAILABLE in the first pass: RetryUnavailable's work.
  std::vector<std::string> retry_ ABSL_GUARDED_BY(mu_);
  ublk::Mutex threads_mu_;
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(threads_mu_);
  bool threads_closed_ ABSL_GUARDED_BY(threads_mu_) = false;  // Stop() took them
};

}  // namespace ublk_csi
