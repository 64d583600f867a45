// Mutex, MutexLock and CondVar: std::mutex and std::condition_variable with
// the capability annotations clang's -Wthread-safety checks (ABSL_GUARDED_BY on
// a bare std::mutex checks nothing: std::mutex carries no capability).
// Not absl::Mutex: Debian's abseil is not TSan-instrumented, so TSan would not
// see absl::Mutex's happens-before edges; std::mutex it does see.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "absl/base/thread_annotations.h"

namespace ublk {

class ABSL_LOCKABLE Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }
  bool TryLock() ABSL_EXCLUSIVE_TRYLOCK_FUNCTION(true) { return mu_.try_lock(); }
  // Tells the analysis the caller holds this mutex where it cannot see it
  // (a callback the owner runs under its lock). Checks nothing at run time.
  void AssertHeld() const ABSL_ASSERT_EXCLUSIVE_LOCK() {}
  // The pthread mutex underneath: lets a test that counts pthread locks
  // tell this mutex apart (tests/ublk/hot_path_test.cc).
  std::mutex::native_handle_type native_handle() { return mu_.native_handle(); }

 private:
  friend class CondVar;
  std::mutex mu_;
};

// Holds a Mutex for its scope. Unlock()/Lock() drop and retake it inside the
// scope (the destructor unlocks only if held), like std::unique_lock.
class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() {
    if (held_) mu_->Unlock();
  }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

  void Unlock() ABSL_UNLOCK_FUNCTION() {
    held_ = false;
    mu_->Unlock();
  }
  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() {
    mu_->Lock();
    held_ = true;
  }

 private:
  friend class CondVar;
  Mutex* const mu_;
  bool held_ = true;
};

// A condition variable waited on through a held MutexLock. The names follow
// std::condition_variable. A predicate runs with the mutex held, but the
// analysis cannot see that inside a lambda: annotate it,
//   cv_.Wait(lock, [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done_; });
class CondVar {
 public:
  void Wait(MutexLock& lock) {
    std::unique_lock<std::mutex> l(lock.mu_->mu_, std::adopt_lock);
    cv_.wait(l);
    l.release();
  }
  template <class Pred>
  void Wait(MutexLock& lock, Pred pred) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    while (!pred()) Wait(lock);
  }
  // Returns std::cv_status::timeout once `deadline` has passed.
  template <class Clock, class Duration>
  std::cv_status WaitUntil(MutexLock& lock,
                           const std::chrono::time_point<Clock, Duration>& deadline) {
    std::unique_lock<std::mutex> l(lock.mu_->mu_, std::adopt_lock);
    const std::cv_status s = cv_.wait_until(l, deadline);
    l.release();
    return s;
  }
  // Returns pred() at the end: false only if it timed out with pred() false.
  template <class Rep, class Period, class Pred>
  bool WaitFor(MutexLock& lock, const std::chrono::duration<Rep, Period>& timeout,
               Pred pred) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!pred()) {
      if (WaitUntil(lock, deadline) == std::cv_status::timeout) return pred();
    }
    return true;
  }
  void NotifyOne() { cv_.notify_one(); }
  void NotifyAll() { cv_.notify_all(); }

 private:
  std::condition_variable cv_;
};

}  // namespace ublk
