// Completions of target I/O that finish off the worker's ring: a library
// with threads of its own (librbd) calls back on one of them, and the result
// must come back to the worker that owns the request, on its own thread,
// with no thread of ours in between. Each worker owns an
// AsyncCompletionQueue (a lock-free multi-producer list plus an eventfd the
// worker keeps a READ on in its ring); each started target I/O carries an
// AsyncCompletion (one per tag, owned by the worker) that the target posts
// exactly once. The worker then treats (user_data, result) exactly as a CQE
// of its ring: FinishIo gets the result.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "ublk/unique_fd.h"

namespace ublk {

class AsyncCompletionQueue;

class AsyncCompletion {
 public:
  // Any thread, exactly once per I/O that StartIo left in flight without an
  // SQE. Allocates nothing, takes no lock; at most one eventfd write.
  void Post(int32_t result);

 private:
  friend class AsyncCompletionQueue;
  AsyncCompletionQueue* queue_ = nullptr;
  uint64_t user_data_ = 0;
  int32_t result_ = 0;
  AsyncCompletion* next_ = nullptr;
};

class AsyncCompletionQueue {
 public:
  static absl::StatusOr<std::unique_ptr<AsyncCompletionQueue>> Create();
  // Waits for Post calls still running (after their list push, before their
  // eventfd write) to leave: a posting thread never touches a dead queue.
  ~AsyncCompletionQueue();

  // Owner thread: ties `c` to this queue for the I/O of `user_data`.
  void Prepare(AsyncCompletion& c, uint64_t user_data) {
    c.queue_ = this;
    c.user_data_ = user_data;
    c.next_ = nullptr;
  }
  // The eventfd (blocking: io_uring would complete a READ on a non-blocking
  // one with EAGAIN instead of waiting): readable once something was posted
  // to an empty queue. The owner keeps a READ on it and calls Drain.
  int fd() const { return fd_.get(); }
  // Owner thread: calls fn(user_data, result) for every posted completion,
  // oldest first. Returns how many. A completion may be re-Prepared and
  // re-started from inside `fn`.
  size_t Drain(absl::FunctionRef<void(uint64_t user_data, int32_t result)> fn);
  // Posted and not drained yet (approximate; for tests and waits).
  bool empty() const { return head_.load(std::memory_order_acquire) == nullptr; }

 private:
  friend class AsyncCompletion;
  explicit AsyncCompletionQueue(UniqueFd fd) : fd_(std::move(fd)) {}
  void Push(AsyncCompletion* c);

  UniqueFd fd_;
  std::atomic<AsyncCompletion*> head_{nullptr};
  std::atomic<int> posting_{0};
};

}  // namespace ublk
