// SpinLock: a lock for critical sections of a few dozen instructions that
// are almost never contended, where Mutex's cost (a pthread mutex: ~65
// instructions a lock and unlock) is most of the work. The front caches of
// CachingAllocator use it: each is taken by its own thread on every
// operation and by another only for the allocator's maintenance (a flush, a
// stats read, a snapshot).
//
// Like Mutex it is a scheduling point on a thread in a deterministic-schedule
// run (cooperative_scheduler.h), and TSan sees it (an acquire exchange and a
// release store). A waiter spins with a pause, then yields its CPU: it never
// sleeps in the kernel, which is right only because holders never block.
// Annotated for clang's -Wthread-safety like Mutex; hold it with
// SpinLockHolder.
#ifndef GPUALLOC_ALLOCATOR_COMMON_SPIN_LOCK_H_
#define GPUALLOC_ALLOCATOR_COMMON_SPIN_LOCK_H_

#include <atomic>
#include <thread>

#include "absl/base/optimization.h"
#include "absl/base/thread_annotations.h"
#include "allocator/common/cooperative_scheduler.h"
#include "allocator/common/mutex.h"

namespace gpualloc {

class ABSL_LOCKABLE SpinLock {
 public:
  SpinLock() = default;
  SpinLock(const SpinLock&) = delete;
  SpinLock& operator=(const SpinLock&) = delete;

  void lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() {
    CooperativeScheduler* scheduler = CooperativeScheduler::Current();
    if (ABSL_PREDICT_FALSE(scheduler != nullptr)) {
      LockUnderScheduler(*scheduler, *this);
      return;
    }
    if (ABSL_PREDICT_TRUE(try_lock())) return;
    LockSlow();
  }
  bool try_lock() ABSL_EXCLUSIVE_TRYLOCK_FUNCTION(true) {
    return !held_.exchange(true, std::memory_order_acquire);
  }
  void unlock() ABSL_UNLOCK_FUNCTION() { held_.store(false, std::memory_order_release); }
  void AssertHeld() const ABSL_ASSERT_EXCLUSIVE_LOCK() {}

 private:
  void LockSlow() ABSL_EXCLUSIVE_LOCK_FUNCTION() {
    for (int spins = 0;; ++spins) {
      // Read before trying again: waiters do not bounce the line while it is held.
      if (!held_.load(std::memory_order_relaxed) && try_lock()) return;
      if (spins < 100) {
        Mutex::Pause();
      } else {
        std::this_thread::yield();
      }
    }
  }

  std::atomic<bool> held_{false};
};

// Holds a SpinLock for its scope.
class ABSL_SCOPED_LOCKABLE SpinLockHolder {
 public:
  explicit SpinLockHolder(SpinLock& lock) ABSL_EXCLUSIVE_LOCK_FUNCTION(lock) : lock_(lock) {
    lock_.lock();
  }
  ~SpinLockHolder() ABSL_UNLOCK_FUNCTION() { lock_.unlock(); }
  SpinLockHolder(const SpinLockHolder&) = delete;
  SpinLockHolder& operator=(const SpinLockHolder&) = delete;

 private:
  SpinLock& lock_;
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_COMMON_SPIN_LOCK_H_
