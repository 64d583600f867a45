#include "ublk/buffer_pool.h"

#include <algorithm>
#include <new>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"

namespace ublk {
namespace {

constexpr size_t kHeapAlign = BufferPoolOptions::kPageSize;

size_t RoundUpToPage(size_t len) {
  const size_t page = BufferPoolOptions::kPageSize;
  if (len == 0) return page;
  if (len > SIZE_MAX - (page - 1)) return len;  // let the allocator refuse it
  return (len + page - 1) / page * page;
}

prometheus::Labels WorkerLabels(int worker) { return {{"worker", std::to_string(worker)}}; }

template <typename T>
double ValueOf(prometheus::Family<T>& family, int worker) {
  const prometheus::Labels labels = WorkerLabels(worker);
  if (!family.Has(labels)) return 0;
  return family.Add(labels).Value();
}

}  // namespace

// ---------------------------------------------------------------------------
// BufferPoolOptions

absl::Status BufferPoolOptions::Validate() const {
  if (slot_count == 0) {
    return absl::InvalidArgumentError("buffer pool slot_count must be > 0");
  }
  if (slot_size == 0 || slot_size % kPageSize != 0) {
    return absl::InvalidArgumentError(absl::StrCat("buffer pool slot_size ", slot_size,
                                                   " must be a positive multiple of ", kPageSize));
  }
  if (slot_count > kMaxPoolBytes / slot_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("buffer pool of slot_count ", slot_count, " x slot_size ", slot_size,
                     " exceeds the per-worker cap of ", kMaxPoolBytes, " bytes"));
  }
  if (chunk_slots > slot_count) {
    return absl::InvalidArgumentError(
        absl::StrCat("buffer pool chunk_slots ", chunk_slots, " exceeds slot_count ", slot_count));
  }
  if (retry_interval <= absl::ZeroDuration() || retry_interval == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("buffer pool retry_interval ",
                                                   absl::FormatDuration(retry_interval),
                                                   " must be positive and finite"));
  }
  return absl::OkStatus();
}

BufferPoolOptions BufferPoolOptions::ForBudget(size_t total_bytes, int worker_count,
                                               size_t slot_size) {
  BufferPoolOptions options;
  options.slot_size = slot_size;
  const size_t workers = worker_count > 0 ? static_cast<size_t>(worker_count) : size_t{1};
  const size_t per_worker = total_bytes / workers;
  options.slot_count = slot_size == 0 ? 0 : std::max<size_t>(1, per_worker / slot_size);
  return options;
}

// ---------------------------------------------------------------------------
// IoBuffer

IoBuffer::IoBuffer(IoBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      pool_(std::exchange(other.pool_, nullptr)),
      heap_(std::exchange(other.heap_, nullptr)),
      budget_(std::exchange(other.budget_, nullptr)),
      charged_(std::exchange(other.charged_, 0)),
      slot_(std::exchange(other.slot_, 0)) {}

IoBuffer& IoBuffer::operator=(IoBuffer&& other) noexcept {
  if (this != &other) {
    Reset();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    pool_ = std::exchange(other.pool_, nullptr);
    heap_ = std::exchange(other.heap_, nullptr);
    budget_ = std::exchange(other.budget_, nullptr);
    charged_ = std::exchange(other.charged_, 0);
    slot_ = std::exchange(other.slot_, 0);
  }
  return *this;
}

void IoBuffer::Reset() {
  // Clear our fields first: the slot-released callback may acquire again.
  BufferPool* pool = std::exchange(pool_, nullptr);
  MemorySource* heap = std::exchange(heap_, nullptr);
  void* data = std::exchange(data_, nullptr);
  const uint32_t slot = std::exchange(slot_, 0);
  size_ = 0;
  MemoryBudget* budget = std::exchange(budget_, nullptr);
  const size_t charged = std::exchange(charged_, 0);
  if (pool != nullptr) {
    pool->ReleaseSlot(slot);
  } else if (heap != nullptr) {
    heap->FreeHeap(data);
    if (budget != nullptr) budget->Uncharge(charged);
  }
}

// ---------------------------------------------------------------------------
// BufferPool

struct BufferPool::Series {
  prometheus::Counter& heap_fallbacks;
  prometheus::Counter& creation_failures;
  prometheus::Counter& slot_waits;
  prometheus::Gauge& slots_in_use;
  prometheus::Gauge& pool_bytes;
  prometheus::Gauge& degraded_workers;
};

BufferPool::BufferPool(const BufferPoolOptions& options, MemorySource& memory, const Clock& clock,
                       BufferPoolMetrics* metrics, int worker_id, MemoryBudget* budget)
    : options_(options),
      options_status_(options.Validate()),
      memory_(memory),
      clock_(clock),
      worker_id_(worker_id),
      budget_(budget),
      demand_(options.slot_count) {
  if (metrics != nullptr) {
    const prometheus::Labels labels = WorkerLabels(worker_id);
    series_ = std::make_unique<Series>(Series{
        metrics->heap_fallbacks_.Add(labels),
        metrics->creation_failures_.Add(labels),
        metrics->slot_waits_.Add(labels),
        metrics->slots_in_use_.Add(labels),
        metrics->pool_bytes_.Add(labels),
        metrics->degraded_workers_,
    });
  }
  if (options_status_.ok()) {
    const size_t chunks = (options_.slot_count + ChunkSlots() - 1) / ChunkSlots();
    chunks_.reset(new (std::nothrow) std::byte*[chunks]);
    free_slots_.reset(new (std::nothrow) uint32_t[options_.slot_count]);
  }
}

BufferPool::~BufferPool() {
  DCHECK_EQ(slots_in_use_, 0u) << "worker " << worker_id_
                               << ": buffer pool destroyed with pooled IoBuffers still alive";
  ReleaseIfIdle();
  if (series_ != nullptr) {
    series_->slots_in_use.Set(0);
    series_->pool_bytes.Set(0);
    if (degraded_) series_->degraded_workers.Decrement();
  }
}

size_t BufferPool::ChunkSlots() const {
  return options_.chunk_slots == 0 ? options_.slot_count : options_.chunk_slots;
}

size_t BufferPool::Target() const { return std::min(options_.slot_count, demand_); }

std::byte* BufferPool::SlotAddress(uint32_t slot) const {
  const size_t per = ChunkSlots();
  return chunks_[slot / per] + (slot % per) * options_.slot_size;
}

void BufferPool::SetSlotReleasedCallback(std::function<void()> callback) {
  slot_released_ = std::move(callback);
}

void BufferPool::SetDemand(size_t slots) { demand_ = slots; }

size_t BufferPool::ReleaseIfIdle(bool pressure) {
  if (slots_in_use_ != 0 || capacity_ == 0) return 0;
  const size_t per = ChunkSlots();
  size_t released = 0;
  for (size_t c = 0; c < chunk_count_; ++c) {
    const size_t slots = std::min(per, options_.slot_count - c * per);
    const size_t bytes = slots * options_.slot_size;
    memory_.Unmap(chunks_[c], bytes);
    if (budget_ != nullptr) budget_->Uncharge(bytes);
    released += bytes;
  }
  chunk_count_ = 0;
  capacity_ = 0;
  free_count_ = 0;
  // Under pressure, not mapped again at once.
  if (pressure) last_attempt_ = clock_.Now();
  if (series_ != nullptr) series_->pool_bytes.Set(0);
  return released;
}

AcquireResult BufferPool::AcquireIoBuffer(size_t len) {
  // Invalid options also go through MaybeGrow(): it says why, once.
  if (free_count_ == 0 && (capacity_ < Target() || !options_status_.ok())) {
    MaybeGrow();
  }
  if (capacity_ == 0) return AcquireHeap(len);

  if (len > options_.slot_size) {
    // The device was set up for larger I/O than a slot; serving it from the
    // heap keeps it correct, and the fallback counter makes it visible.
    if (!oversize_logged_) {
      oversize_logged_ = true;
      LOG(WARNING) << "worker " << worker_id_ << ": I/O of " << len
                   << " bytes exceeds the buffer pool slot size of " << options_.slot_size
                   << " bytes; serving such I/O from the heap";
    }
    return AcquireHeap(len);
  }
  if (free_count_ == 0) {
    if (series_ != nullptr) series_->slot_waits.Increment();
    return AcquireResult{AcquireOutcome::kPoolExhausted, IoBuffer()};
  }
  const uint32_t slot = free_slots_[--free_count_];
  ++slots_in_use_;
  if (series_ != nullptr) series_->slots_in_use.Increment();
  return AcquireResult{AcquireOutcome::kPooled, IoBuffer(this, slot, SlotAddress(slot), len)};
}

AcquireResult BufferPool::AcquireHeap(size_t len) {
  const size_t bytes = RoundUpToPage(len);
  if (budget_ != nullptr && !budget_->TryCharge(bytes)) {
    if (!heap_failing_) {
      heap_failing_ = true;
      LOG(WARNING) << "worker " << worker_id_ << ": heap buffer of " << len
                   << " bytes refused by the memory budget (headroom " << budget_->headroom()
                   << " bytes); I/O waits and is retried until memory returns";
    }
    return AcquireResult{AcquireOutcome::kNoMemory, IoBuffer()};
  }
  absl::StatusOr<void*> block = memory_.AllocateHeap(bytes, kHeapAlign);
  if (!block.ok() || *block == nullptr) {
    if (budget_ != nullptr) budget_->Uncharge(bytes);
    if (!heap_failing_) {
      heap_failing_ = true;
      // No Status::ToString() here: this line is written while allocation
      // fails, so it must not allocate.
      LOG(WARNING) << "worker " << worker_id_ << ": no buffer pool and heap "
                   << "allocation of " << len << " bytes failed ("
                   << (block.ok() ? "null block" : StatusCodeText(block.status().code()))
                   << "); I/O waits and is retried until memory returns";
    }
    return AcquireResult{AcquireOutcome::kNoMemory, IoBuffer()};
  }
  if (heap_failing_) {
    heap_failing_ = false;
    LOG(INFO) << "worker " << worker_id_ << ": heap allocation works again; resuming waiting I/O";
  }
  if (series_ != nullptr) series_->heap_fallbacks.Increment();
  return AcquireResult{AcquireOutcome::kHeap,
                       IoBuffer(&memory_, budget_, budget_ != nullptr ? bytes : 0, *block, len)};
}

void BufferPool::MaybeGrow() {
  const absl::Time now = clock_.Now();
  if (last_attempt_.has_value()) {
    const absl::Duration since = now - *last_attempt_;
    // A clock stepped backwards counts as elapsed: otherwise a wall-clock
    // step of an hour would pin the worker to the heap for an hour.
    if (since >= absl::ZeroDuration() && since < options_.retry_interval) {
      return;
    }
  }
  last_attempt_ = now;
  const bool first = capacity_ == 0;
  const absl::Status status = AddChunk();
  if (status.ok()) {
    // A success is not rate-limited: the next chunk may follow at once.
    last_attempt_.reset();
    if (first && degraded_) {
      degraded_ = false;
      if (series_ != nullptr) series_->degraded_workers.Decrement();
      LOG(INFO) << "worker " << worker_id_ << ": buffer pool of " << pool_bytes()
                << " bytes created after " << absl::FormatDuration(now - degraded_since_)
                << " degraded; I/O uses the pool again";
    }
    return;
  }
  if (series_ != nullptr) series_->creation_failures.Increment();
  if (first && !degraded_) {
    degraded_ = true;
    degraded_since_ = now;
    if (series_ != nullptr) series_->degraded_workers.Increment();
    // status.message() and StatusCodeText(): no allocation (see AcquireHeap).
    LOG(WARNING) << "worker " << worker_id_ << ": cannot create buffer pool ("
                 << std::min(ChunkSlots(), Target()) << " x " << options_.slot_size
                 << " bytes): " << StatusCodeText(status.code()) << " " << status.message()
                 << "; serving I/O from heap buffers, retrying every "
                 << absl::FormatDuration(options_.retry_interval);
  }
}

absl::Status BufferPool::AddChunk() {
  if (!options_status_.ok()) return options_status_;
  if (chunks_ == nullptr || free_slots_ == nullptr) {
    return absl::Status(absl::StatusCode::kResourceExhausted, "");
  }
  const size_t per = ChunkSlots();
  const size_t first_slot = chunk_count_ * per;
  const size_t slots = std::min(per, options_.slot_count - first_slot);
  const size_t bytes = slots * options_.slot_size;
  if (budget_ != nullptr && !budget_->TryCharge(bytes)) {
    return absl::Status(absl::StatusCode::kResourceExhausted, "(memory budget: no headroom)");
  }
  absl::StatusOr<void*> addr = memory_.Map(bytes);
  if (!addr.ok() || *addr == nullptr) {
    if (budget_ != nullptr) budget_->Uncharge(bytes);
    if (!addr.ok()) return addr.status();
    return absl::Status(absl::StatusCode::kInternal, "(null mapping)");
  }
  chunks_[chunk_count_++] = static_cast<std::byte*>(*addr);
  // Lowest slot on top, so a lightly loaded worker keeps touching the same
  // few (warm) slots.
  for (size_t i = 0; i < slots; ++i) {
    free_slots_[free_count_++] = static_cast<uint32_t>(first_slot + slots - 1 - i);
  }
  capacity_ += slots;
  if (series_ != nullptr) {
    series_->pool_bytes.Set(static_cast<double>(pool_bytes()));
  }
  return absl::OkStatus();
}

void BufferPool::ReleaseSlot(uint32_t slot) {
  DCHECK_LT(free_count_, capacity_);
  free_slots_[free_count_++] = slot;
  --slots_in_use_;
  if (series_ != nullptr) series_->slots_in_use.Decrement();
  if (slot_released_) slot_released_();
}

// ---------------------------------------------------------------------------
// BufferPoolMetrics

BufferPoolMetrics::BufferPoolMetrics(prometheus::Registry& registry)
    : heap_fallbacks_(prometheus::BuildCounter()
                          .Name("ublk_csi_buffer_pool_heap_fallbacks_total")
                          .Help("I/O buffers served from the heap instead of the "
                                "worker's buffer pool (pool unavailable, or I/O larger "
                                "than a slot)")
                          .Register(registry)),
      creation_failures_(prometheus::BuildCounter()
                             .Name("ublk_csi_buffer_pool_creation_failures_total")
                             .Help("Failed attempts to map a worker's buffer pool")
                             .Register(registry)),
      slot_waits_(prometheus::BuildCounter()
                      .Name("ublk_csi_buffer_pool_slot_waits_total")
                      .Help("I/Os that found every buffer pool slot busy and "
                            "waited for one")
                      .Register(registry)),
      slots_in_use_(prometheus::BuildGauge()
                        .Name("ublk_csi_buffer_pool_slots_in_use")
                        .Help("Buffer pool slots currently held by I/O")
                        .Register(registry)),
      pool_bytes_(prometheus::BuildGauge()
                      .Name("ublk_csi_buffer_pool_bytes")
                      .Help("Bytes mapped for the worker's buffer pool")
                      .Register(registry)),
      degraded_workers_(prometheus::BuildGauge()
                            .Name("ublk_csi_buffer_pool_degraded_workers")
                            .Help("Workers whose buffer pool could not be created and "
                                  "that serve I/O from the heap")
                            .Register(registry)
                            .Add({})) {}

double BufferPoolMetrics::heap_fallbacks(int worker) const {
  return ValueOf(heap_fallbacks_, worker);
}
double BufferPoolMetrics::creation_failures(int worker) const {
  return ValueOf(creation_failures_, worker);
}
double BufferPoolMetrics::slot_waits(int worker) const { return ValueOf(slot_waits_, worker); }
double BufferPoolMetrics::slots_in_use(int worker) const { return ValueOf(slots_in_use_, worker); }
double BufferPoolMetrics::pool_bytes(int worker) const { return ValueOf(pool_bytes_, worker); }
double BufferPoolMetrics::degraded_workers() const { return degraded_workers_.Value(); }

}  // namespace ublk
