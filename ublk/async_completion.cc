#include "ublk/async_completion.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <thread>

namespace ublk {

void AsyncCompletion::Post(int32_t result) {
  result_ = result;
  queue_->Push(this);
}

absl::StatusOr<std::unique_ptr<AsyncCompletionQueue>> AsyncCompletionQueue::Create() {
  int fd = eventfd(0, EFD_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, "async completion queue: eventfd");
  return std::unique_ptr<AsyncCompletionQueue>(new AsyncCompletionQueue(UniqueFd(fd)));
}

AsyncCompletionQueue::~AsyncCompletionQueue() {
  while (posting_.load(std::memory_order_acquire) > 0) std::this_thread::yield();
}

void AsyncCompletionQueue::Push(AsyncCompletion* c) {
  // Counted before the push: once the owner has drained `c` it may destroy
  // the queue, and this thread still has the eventfd write to do.
  posting_.fetch_add(1, std::memory_order_acq_rel);
  AsyncCompletion* old = head_.load(std::memory_order_relaxed);
  do {
    c->next_ = old;
  } while (
      !head_.compare_exchange_weak(old, c, std::memory_order_release, std::memory_order_relaxed));
  if (old == nullptr) {
    // The first of a batch wakes the owner; later ones find it awake (it
    // takes the whole list at once).
    uint64_t one = 1;
    while (write(fd_.get(), &one, sizeof(one)) < 0 && errno == EINTR) {
    }
  }
  posting_.fetch_sub(1, std::memory_order_acq_rel);
}

size_t AsyncCompletionQueue::Drain(absl::FunctionRef<void(uint64_t user_data, int32_t result)> fn) {
  AsyncCompletion* list = head_.exchange(nullptr, std::memory_order_acquire);
  if (list == nullptr) return 0;
  // The list is newest first: reverse it so completions run in post order.
  AsyncCompletion* fifo = nullptr;
  while (list != nullptr) {
    AsyncCompletion* next = list->next_;
    list->next_ = fifo;
    fifo = list;
    list = next;
  }
  size_t n = 0;
  while (fifo != nullptr) {
    AsyncCompletion* next = fifo->next_;
    // Read before fn: fn may re-arm `fifo` for a new I/O.
    const uint64_t user_data = fifo->user_data_;
    const int32_t result = fifo->result_;
    fn(user_data, result);
    fifo = next;
    ++n;
  }
  return n;
}

}  // namespace ublk
