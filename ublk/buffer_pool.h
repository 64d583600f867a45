// Per-worker bounce buffers for the copy data modes (user copy, get-data).
// A BufferPool hands out fixed-size slots of one lazily created mapping, and
// degrades to heap blocks while that mapping cannot be had, retrying it at
// most once per retry_interval (DESIGN.md, "Why degrade instead of die").
//
// Threads: one BufferPool per worker. AcquireIoBuffer(), the destruction of
// pooled IoBuffers and the slot-released callback all run on that worker's
// thread; the pool takes no locks. BufferPoolMetrics is thread-safe and may be
// shared by every worker's pool.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "ublk/clock.h"
#include "ublk/memory.h"
#include "ublk/memory_budget.h"

namespace prometheus {
class Registry;
class Counter;
class Gauge;
template <typename T>
class Family;
}  // namespace prometheus

namespace ublk {

// Memory budget. The defaults give 32 x 128 KiB = 4 MiB per worker: with one
// worker per CPU that is 64 MiB on a 16-CPU node (the incident's node committed
// 16 x 256 x 128 KiB = 512 MiB), and pool memory is mapped only by workers that
// serve copy-mode I/O. 32 slots cover one queue of depth 32 in flight; deeper
// queues simply wait for a slot (bounded backpressure). Use ForBudget() to
// split a node-wide budget across a different worker count.
struct BufferPoolOptions {
  static constexpr size_t kPageSize = 4096;
  static constexpr size_t kDefaultSlotSize = 128 * 1024;
  static constexpr size_t kDefaultSlotCount = 32;
  // The default node-wide budget ForBudget() is meant to be called with.
  static constexpr size_t kDefaultTotalBudget = 64 * 1024 * 1024;
  // Upper bound on one worker's mapping; Validate() rejects more.
  static constexpr size_t kMaxPoolBytes = 256 * 1024 * 1024;

  // Bytes per slot. Must be >= the largest I/O the device can send (the
  // engine sets the device's max I/O size to at most this). A larger request
  // is still served, from the heap, and counted as a heap fallback.
  size_t slot_size = kDefaultSlotSize;
  size_t slot_count = kDefaultSlotCount;
  // Minimum time between two attempts to create the pool after a failure.
  absl::Duration retry_interval = absl::Seconds(1);
  // The pool is mapped (and pre-faulted) in chunks of this many slots, added
  // only while every slot is busy and the demand (SetDemand) wants more, so
  // its memory follows what is served. 0: one chunk of slot_count slots.
  size_t chunk_slots = 0;

  // InvalidArgument naming the field for: zero slots; slot size zero or not a
  // multiple of 4096; slot_count * slot_size above kMaxPoolBytes; retry
  // interval not positive and finite; chunk_slots above slot_count.
  absl::Status Validate() const;

  // Options with `slot_size` whose slot count splits `total_bytes` evenly over
  // `worker_count` pools (at least one slot each, so a tiny budget still
  // validates; with very many workers the total can then exceed the budget by
  // at most one slot per worker).
  static BufferPoolOptions ForBudget(size_t total_bytes, int worker_count,
                                     size_t slot_size = kDefaultSlotSize);
};

class BufferPool;
class BufferPoolMetrics;

// One I/O's buffer: a pooled slot or a heap block. Move-only; destruction
// gives the memory back (a slot to its pool, firing the slot-released
// callback; a heap block to the MemorySource). An empty IoBuffer (default,
// moved-from, or from a failed acquisition) owns nothing.
//
// data() is 4096-aligned (usable for O_DIRECT) and has at least size() bytes.
// A pooled IoBuffer must be destroyed on its pool's worker thread, before the
// pool; a heap one may be destroyed anywhere while its MemorySource lives.
class IoBuffer {
 public:
  IoBuffer() = default;
  IoBuffer(IoBuffer&& other) noexcept;
  IoBuffer& operator=(IoBuffer&& other) noexcept;
  IoBuffer(const IoBuffer&) = delete;
  IoBuffer& operator=(const IoBuffer&) = delete;
  ~IoBuffer() { Reset(); }

  void* data() const { return data_; }
  // The length asked for in AcquireIoBuffer().
  size_t size() const { return size_; }
  bool pooled() const { return pool_ != nullptr; }
  explicit operator bool() const { return data_ != nullptr; }

  // Gives the memory back now; the buffer becomes empty.
  void Reset();

 private:
  friend class BufferPool;
  IoBuffer(BufferPool* pool, uint32_t slot, void* data, size_t size)
      : data_(data), size_(size), pool_(pool), slot_(slot) {}
  IoBuffer(MemorySource* heap, MemoryBudget* budget, size_t charged, void* data, size_t size)
      : data_(data), size_(size), heap_(heap), budget_(budget), charged_(charged) {}

  void* data_ = nullptr;
  size_t size_ = 0;
  BufferPool* pool_ = nullptr;      // set for a pooled slot
  MemorySource* heap_ = nullptr;    // set for a heap block
  MemoryBudget* budget_ = nullptr;  // a heap block's charge goes back here
  size_t charged_ = 0;
  uint32_t slot_ = 0;
};

enum class AcquireOutcome {
  kPooled,         // a pool slot
  kHeap,           // a heap block: no pool (degraded), or len > slot_size
  kPoolExhausted,  // every slot busy: park the I/O until a slot is released
  kNoMemory,       // no pool and no heap (or the memory budget refused
                   // both): park the I/O and retry later
};

struct AcquireResult {
  AcquireOutcome outcome;
  IoBuffer buffer;  // empty for kPoolExhausted and kNoMemory
};

class BufferPool {
 public:
  // Maps nothing: the pool is created by the first AcquireIoBuffer(). Options
  // should have passed Validate() (the caller reports bad configuration);
  // invalid ones are not fatal here either: the worker logs the error once and
  // serves from the heap, degraded. `memory`, `clock` and `metrics` (nullable)
  // must outlive the pool. `worker_id` labels the metrics and log lines and
  // must be unique among pools sharing `metrics`. `budget` (nullable, must
  // outlive the pool) admits every chunk and heap block first.
  BufferPool(const BufferPoolOptions& options, MemorySource& memory, const Clock& clock,
             BufferPoolMetrics* metrics, int worker_id, MemoryBudget* budget = nullptr);
  // Every pooled IoBuffer must have been destroyed.
  ~BufferPool();
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // A buffer of at least `len` bytes. Creates the pool (its first chunk) if
  // there is none, or adds a chunk when every slot is busy and the demand
  // wants more, at most once per retry_interval after a failed attempt. See
  // AcquireOutcome for what the caller does with each result; never blocks,
  // throws, aborts or allocates from the C++ heap.
  AcquireResult AcquireIoBuffer(size_t len);

  // How many slots the I/O this pool serves can hold at once (the summed
  // depth of the copy-mode queues attached to the worker). The pool grows
  // to min(demand, slot_count) slots, no further. Until it is called the
  // demand is slot_count.
  void SetDemand(size_t slots);
  // Unmaps every chunk if no slot is in use (memory pressure, or nothing
  // left to serve); the next I/O maps again (after `pressure`: not before
  // retry_interval). Returns the bytes released.
  size_t ReleaseIfIdle(bool pressure = false);

  // Called (on the worker thread) each time a pooled slot is released, after
  // the slot is free again, so it may call AcquireIoBuffer(). It must not call
  // SetSlotReleasedCallback() itself.
  void SetSlotReleasedCallback(std::function<void()> callback);

  // True while the last pool creation attempt failed.
  bool degraded() const { return degraded_; }
  bool has_pool() const { return capacity_ > 0; }
  size_t slots_in_use() const { return slots_in_use_; }
  // Slots mapped now, and their bytes.
  size_t capacity() const { return capacity_; }
  size_t pool_bytes() const { return capacity_ * options_.slot_size; }
  size_t demand() const { return demand_; }
  int worker_id() const { return worker_id_; }
  const BufferPoolOptions& options() const { return options_; }

 private:
  friend class IoBuffer;
  struct Series;

  size_t ChunkSlots() const;
  size_t Target() const;
  // Adds one chunk if the retry interval allows; logs transitions.
  void MaybeGrow();
  absl::Status AddChunk();
  void ReleaseSlot(uint32_t slot);
  AcquireResult AcquireHeap(size_t len);
  std::byte* SlotAddress(uint32_t slot) const;

  const BufferPoolOptions options_;
  const absl::Status options_status_;
  MemorySource& memory_;
  const Clock& clock_;
  const int worker_id_;
  std::unique_ptr<Series> series_;  // null without metrics
  std::function<void()> slot_released_;

  MemoryBudget* const budget_;
  // Allocated at construction (never on the I/O path): the chunks' bases
  // and the stack of free slot indices. Null if that allocation failed.
  std::unique_ptr<std::byte*[]> chunks_;
  std::unique_ptr<uint32_t[]> free_slots_;
  size_t chunk_count_ = 0;
  size_t capacity_ = 0;  // slots mapped
  size_t demand_;
  size_t free_count_ = 0;
  size_t slots_in_use_ = 0;

  bool degraded_ = false;
  absl::Time degraded_since_;
  std::optional<absl::Time> last_attempt_;
  bool heap_failing_ = false;     // for one log line per heap-failure episode
  bool oversize_logged_ = false;  // one log line per pool for len > slot_size
};

// The pool's Prometheus metrics. Construct one per registry (it registers the
// families) and share it among all workers' pools. Per-worker series carry
// the label worker="<id>". The accessors read current values (for tests and
// debugging; 0 for a worker that has no series yet).
class BufferPoolMetrics {
 public:
  explicit BufferPoolMetrics(prometheus::Registry& registry);
  BufferPoolMetrics(const BufferPoolMetrics&) = delete;
  BufferPoolMetrics& operator=(const BufferPoolMetrics&) = delete;

  double heap_fallbacks(int worker) const;
  double creation_failures(int worker) const;
  double slot_waits(int worker) const;
  double slots_in_use(int worker) const;
  double pool_bytes(int worker) const;
  double degraded_workers() const;

 private:
  friend class BufferPool;

  prometheus::Family<prometheus::Counter>& heap_fallbacks_;
  prometheus::Family<prometheus::Counter>& creation_failures_;
  prometheus::Family<prometheus::Counter>& slot_waits_;
  prometheus::Family<prometheus::Gauge>& slots_in_use_;
  prometheus::Family<prometheus::Gauge>& pool_bytes_;
  prometheus::Gauge& degraded_workers_;
};

}  // namespace ublk
