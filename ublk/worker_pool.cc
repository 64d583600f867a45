#include "ublk/worker_pool.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "glog/logging.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"
#include "ublk/mutex.h"
#include "ublk/status_macros.h"

namespace ublk {

struct WorkerPool::Series {
  prometheus::Counter* ios = nullptr;
  prometheus::Gauge* queues = nullptr;
  prometheus::Gauge* assigned = nullptr;
  prometheus::Gauge* parked = nullptr;
  prometheus::Counter* parked_total = nullptr;
  prometheus::Counter* sleeps = nullptr;
  prometheus::Counter* polls = nullptr;
  uint64_t ios_seen = 0;  // completed_ios already added to `ios`
  uint64_t parked_seen = 0;
  uint64_t sleeps_seen = 0;
  uint64_t polls_seen = 0;
};

namespace {
// Adds to `counter` what a worker's monotonic count gained since `*seen`.
void AddSince(prometheus::Counter* counter, uint64_t now, uint64_t* seen) {
  if (now <= *seen) return;
  counter->Increment(static_cast<double>(now - *seen));
  *seen = now;
}
}  // namespace

absl::StatusOr<BufferPoolOptions> WorkerPoolOptions::BufferPoolFor(int workers) const {
  BufferPoolOptions o = BufferPoolOptions::ForBudget(buffer_pool_bytes, workers, buffer_slot_size);
  if (buffer_slots_per_worker.has_value()) o.slot_count = *buffer_slots_per_worker;
  o.retry_interval = buffer_retry_interval;
  o.chunk_slots = std::min(buffer_chunk_slots, o.slot_count);
  if (!buffer_slots_per_worker.has_value() && buffer_pool_bytes < buffer_slot_size) {
    return absl::InvalidArgumentError(absl::StrCat("buffer_pool_bytes ", buffer_pool_bytes,
                                                   " is less than one slot of ", buffer_slot_size,
                                                   " bytes"));
  }
  absl::Status s = o.Validate();
  if (!s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("worker pool: ", s.message()));
  }
  return o;
}

WorkerPool::WorkerPool() = default;

namespace {
// worker_count, or for 0 one per CPU and at least kMinDefaultWorkers.
int WorkerCount(const WorkerPoolOptions& options) {
  if (options.worker_count > 0) return options.worker_count;
  return static_cast<int>(
      std::max(static_cast<unsigned>(kMinDefaultWorkers), std::thread::hardware_concurrency()));
}
}  // namespace

absl::Status WorkerPool::ValidateOptions(const WorkerPoolOptions& options) {
  if (options.memory == nullptr) {
    return absl::InvalidArgumentError("worker pool: WorkerPoolOptions.memory is required");
  }
  if (options.worker_count < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("worker pool: worker_count ", options.worker_count, " must be >= 0"));
  }
  if (options.metrics_refresh_interval < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("worker pool: metrics_refresh_interval must be >= 0");
  }
  return options.BufferPoolFor(WorkerCount(options)).status();
}

absl::StatusOr<std::unique_ptr<WorkerPool>> WorkerPool::Create(const WorkerPoolOptions& options,
                                                               prometheus::Registry* registry) {
  RETURN_IF_ERROR(ValidateOptions(options));
  const int count = WorkerCount(options);
  absl::StatusOr<BufferPoolOptions> bp = options.BufferPoolFor(count);
  if (!bp.ok()) return bp.status();

  std::unique_ptr<WorkerPool> pool(new WorkerPool());
  pool->buffer_pool_options_ = *bp;
  if (registry != nullptr) pool->pool_metrics_ = std::make_unique<BufferPoolMetrics>(*registry);
  if (options.budget.has_value()) {
    const MemoryFiles& files =
        options.memory_files != nullptr ? *options.memory_files : pool->real_files_;
    pool->budget_ = std::make_unique<MemoryBudget>(*options.budget, files, registry);
    // Errors are logged once by the budget; it then admits by what it has.
    (void)pool->budget_->Refresh();
    pool->budget_epoch_ = pool->budget_->pressure_epoch();
  }
  const std::vector<int> cpus = options.pin_workers ? AllowedCpus() : std::vector<int>{};
  if (options.pin_workers && cpus.empty()) {
    LOG(WARNING) << "worker pool: cannot read the process's CPUs, workers left unpinned";
  } else if (!cpus.empty()) {
    LOG(INFO) << "worker pool: " << count << " workers pinned round robin to CPUs "
              << absl::StrJoin(cpus, ",");
  }
  for (int i = 0; i < count; ++i) {
    WorkerOptions wo;
    wo.cpu = RoundRobinCpu(cpus, i);
    wo.worker_id = i;
    wo.ring_entries = options.ring_entries;
    wo.ring_flags_allowed = options.ring_flags_allowed;
    wo.buffer_pool = *bp;
    wo.memory = options.memory;
    wo.clock = options.clock;
    wo.pool_metrics = pool->pool_metrics_.get();
    wo.no_memory_retry = options.no_memory_retry;
    wo.busy_poll_rounds = options.busy_poll_rounds;
    wo.budget = pool->budget_.get();
    absl::StatusOr<std::unique_ptr<Worker>> w = Worker::Create(wo);
    if (!w.ok()) {
      pool->Stop();
      return absl::Status(w.status().code(),
                          absl::StrCat("worker pool: starting worker ", i, " of ", count, ": ",
                                       w.status().message()));
    }
    pool->workers_.push_back(std::move(*w));
  }
  {
    ublk::MutexLock lock(&pool->mu_);
    pool->assigned_.assign(count, 0);
  }
  if (registry != nullptr) {
    auto& ios = prometheus::BuildCounter()
                    .Name("ublk_csi_worker_ios_total")
                    .Help("Block requests completed to the kernel, per worker thread")
                    .Register(*registry);
    auto& queues = prometheus::BuildGauge()
                       .Name("ublk_csi_worker_queues")
                       .Help("ublk queues a worker thread is serving")
                       .Register(*registry);
    auto& assigned = prometheus::BuildGauge()
                         .Name("ublk_csi_worker_assigned_queues")
                         .Help("ublk queues assigned to a worker thread by the pool")
                         .Register(*registry);
    auto& parked = prometheus::BuildGauge()
                       .Name("ublk_csi_worker_parked_ios")
                       .Help(
                           "I/Os waiting for a buffer (pool full, or no memory within the "
                           "budget)")
                       .Register(*registry);
    auto& parked_total = prometheus::BuildCounter()
                             .Name("ublk_csi_worker_parked_ios_total")
                             .Help("I/Os that had to wait for a buffer")
                             .Register(*registry);
    auto& sleeps = prometheus::BuildCounter()
                       .Name("ublk_csi_worker_sleeps_total")
                       .Help("Times a worker thread waited in its io_uring for work")
                       .Register(*registry);
    auto& polls = prometheus::BuildCounter()
                      .Name("ublk_csi_worker_busy_polls_total")
                      .Help(
                          "Non-blocking reaps a worker made after work instead of sleeping "
                          "(--busy-poll-rounds)")
                      .Register(*registry);
    // Set once: a worker pins itself before Create returns. A refused pin
    // (the CPU left the cpuset) shows as -1 beside --pin-workers' INFO line.
    auto& pinned = prometheus::BuildGauge()
                       .Name("ublk_csi_worker_pinned_cpu")
                       .Help(
                           "CPU a worker thread is pinned to (--pin-workers); -1: not pinned "
                           "(off, or the CPU was refused)")
                       .Register(*registry);
    ublk::MutexLock lock(&pool->metrics_mu_);
    for (int i = 0; i < count; ++i) {
      const prometheus::Labels labels{{"worker", std::to_string(i)}};
      Series series;
      series.ios = &ios.Add(labels);
      series.queues = &queues.Add(labels);
      series.assigned = &assigned.Add(labels);
      series.parked = &parked.Add(labels);
      series.parked_total = &parked_total.Add(labels);
      series.sleeps = &sleeps.Add(labels);
      series.polls = &polls.Add(labels);
      pinned.Add(labels).Set(pool->workers_[static_cast<size_t>(i)]->pinned_cpu());
      pool->series_.push_back(series);
    }
  }
  LOG(INFO) << "worker pool: " << count << " worker(s), buffer pool of up to " << bp->slot_count
            << " x " << bp->slot_size << " bytes each (created on first I/O; "
            << count * bp->slot_count * bp->slot_size << " bytes at most in total)";
  const absl::Duration metrics_interval =
      registry != nullptr ? options.metrics_refresh_interval : absl::ZeroDuration();
  const absl::Duration budget_interval =
      pool->budget_ != nullptr ? options.budget_refresh_interval : absl::ZeroDuration();
  if (metrics_interval > absl::ZeroDuration() || budget_interval > absl::ZeroDuration()) {
    WorkerPool* self = pool.get();
    pool->refresher_ = std::thread([self, metrics_interval, budget_interval] {
      self->RefreshLoop(metrics_interval, budget_interval);
    });
  }
  return pool;
}

WorkerPool::~WorkerPool() { Stop(); }

void WorkerPool::Stop() {
  {
    ublk::MutexLock lock(&mu_);
    stopped_ = true;
  }
  stop_cv_.NotifyAll();
  if (refresher_.joinable()) refresher_.join();
  for (auto& w : workers_) w->Stop();
}

std::vector<Worker*> WorkerPool::Assign(size_t nr_queues) {
  std::vector<Worker*> result;
  {
    ublk::MutexLock lock(&mu_);
    if (stopped_ || workers_.empty()) return result;
    result.reserve(nr_queues);
    for (size_t q = 0; q < nr_queues; ++q) {
      const size_t best = static_cast<size_t>(std::min_element(assigned_.begin(), assigned_.end()) -
                                              assigned_.begin());
      ++assigned_[best];
      result.push_back(workers_[best].get());
    }
  }
  return result;
}

void WorkerPool::Release(const std::vector<Worker*>& workers) {
  ublk::MutexLock lock(&mu_);
  for (Worker* w : workers) {
    if (w == nullptr) continue;
    const int id = w->id();
    if (id < 0 || static_cast<size_t>(id) >= workers_.size() || workers_[id].get() != w) {
      LOG(ERROR) << "worker pool: Release() of a worker that is not ours (id " << id << ")";
      continue;
    }
    if (assigned_[id] == 0) {
      LOG(ERROR) << "worker pool: worker " << id << " released more queues than assigned";
      continue;
    }
    --assigned_[id];
  }
}

size_t WorkerPool::assigned_queues(size_t i) const {
  ublk::MutexLock lock(&mu_);
  return i < assigned_.size() ? assigned_[i] : 0;
}

void WorkerPool::UpdateMetrics() {
  std::vector<size_t> assigned;
  {
    ublk::MutexLock lock(&mu_);
    assigned = assigned_;
  }
  ublk::MutexLock lock(&metrics_mu_);
  for (size_t i = 0; i < series_.size() && i < workers_.size(); ++i) {
    Series& s = series_[i];
    const Worker& w = *workers_[i];
    AddSince(s.ios, w.completed_ios(), &s.ios_seen);
    s.queues->Set(static_cast<double>(w.queue_count()));
    s.assigned->Set(static_cast<double>(assigned[i]));
    s.parked->Set(static_cast<double>(w.parked_ios()));
    AddSince(s.parked_total, w.parked_ios_total(), &s.parked_seen);
    AddSince(s.sleeps, w.sleeps(), &s.sleeps_seen);
    AddSince(s.polls, w.polls(), &s.polls_seen);
  }
}

void WorkerPool::RefreshBudget() {
  if (budget_ == nullptr) return;
  (void)budget_->Refresh();  // an unreadable usage is logged once by the budget
  const uint64_t epoch = budget_->pressure_epoch();
  ublk::MutexLock lock(&metrics_mu_);
  if (epoch == budget_epoch_) return;
  budget_epoch_ = epoch;
  for (auto& w : workers_) w->Poke();
}

void WorkerPool::RefreshLoop(absl::Duration metrics_interval, absl::Duration budget_interval) {
  // One thread for both: it wakes at the shorter interval and does what is due.
  absl::Duration tick = absl::InfiniteDuration();
  if (metrics_interval > absl::ZeroDuration()) tick = metrics_interval;
  if (budget_interval > absl::ZeroDuration()) tick = std::min(tick, budget_interval);
  const auto wait = absl::ToChronoMilliseconds(std::max(tick, absl::Milliseconds(1)));
  absl::Time next_metrics = absl::InfinitePast();
  for (;;) {
    if (budget_interval > absl::ZeroDuration()) RefreshBudget();
    const absl::Time now = absl::Now();
    if (metrics_interval > absl::ZeroDuration() && now >= next_metrics) {
      UpdateMetrics();
      next_metrics = now + metrics_interval;
    }
    ublk::MutexLock lock(&mu_);
    if (stop_cv_.WaitFor(lock, wait,
                         [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopped_; })) {
      break;
    }
  }
  if (metrics_interval > absl::ZeroDuration()) UpdateMetrics();
}

}  // namespace ublk
