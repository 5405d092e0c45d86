// Mutex: the lock every allocator component holds its state under.
//
// It is a std::mutex (so TSan sees every acquisition) with one addition: on a
// thread taking part in a deterministic-schedule run (see
// cooperative_scheduler.h), acquiring it is a scheduling point, and waiting
// for it is done through the scheduler rather than in the kernel. That is how
// the harness explores the interleavings of allocator calls from a seed.
// Elsewhere the addition costs one thread-local load.
//
// A contended lock() spins briefly (on a host with more than one CPU) before
// it sleeps in the kernel: our critical sections last a few hundred
// nanoseconds, and a futex sleep and wake cost more than that (far more in a
// VM, where each is an exit to the hypervisor). Abseil's Mutex spins the same
// way. Measured on workload 3 with two threads (2-core VM): 1.1-1.4 us per
// operation without the spin, 0.35-0.6 us with it.
//
// Hold it with MutexLock (or ReleasableMutexLock where a scope must let go
// of it for a while): they carry the thread-safety annotations, so clang's
// -Wthread-safety (the fuzz build, see .bazelrc) checks every member marked
// ABSL_GUARDED_BY and every function marked ABSL_EXCLUSIVE_LOCKS_REQUIRED.
// It also meets the Lockable requirements (std::lock_guard works, unchecked).
#ifndef GPUALLOC_ALLOCATOR_COMMON_MUTEX_H_
#define GPUALLOC_ALLOCATOR_COMMON_MUTEX_H_

#include <mutex>
#include <thread>

#include "absl/base/optimization.h"
#include "absl/base/thread_annotations.h"
#include "allocator/common/cooperative_scheduler.h"

namespace gpualloc {

// Acquires `lock` (anything with try_lock and unlock) on a thread in a
// deterministic-schedule run: a scheduling point, then waiting through the
// scheduler rather than in the kernel.
template <typename Lockable>
void LockUnderScheduler(CooperativeScheduler& scheduler, Lockable& lock)
    ABSL_NO_THREAD_SAFETY_ANALYSIS {
  scheduler.Yield();
  while (!lock.try_lock()) {
    // Runnable again once the holder has released it; the probe leaves it free.
    scheduler.BlockUntil([&lock]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
      if (!lock.try_lock()) return false;
      lock.unlock();
      return true;
    });
  }
}

class ABSL_LOCKABLE Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() {
    CooperativeScheduler* scheduler = CooperativeScheduler::Current();
    if (ABSL_PREDICT_FALSE(scheduler != nullptr)) {
      LockUnderScheduler(*scheduler, mu_);
      return;
    }
    for (int spins = SpinsBeforeSleeping(); spins > 0; --spins) {
      if (mu_.try_lock()) return;
      Pause();
    }
    mu_.lock();
  }
  bool try_lock() ABSL_EXCLUSIVE_TRYLOCK_FUNCTION(true) { return mu_.try_lock(); }
  void unlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }
  // Tells -Wthread-safety the caller holds it where the analysis cannot
  // follow (a lock taken in a loop); checks nothing at run time.
  void AssertHeld() const ABSL_ASSERT_EXCLUSIVE_LOCK() {}

  // One spin-wait pause (the CPU's hint that this is a spin loop).
  static void Pause() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
  }

 private:
  // On one CPU the holder cannot run while we spin: sleep at once.
  static int SpinsBeforeSleeping() {
    static const int spins = std::thread::hardware_concurrency() > 1 ? 1000 : 0;
    return spins;
  }
  std::mutex mu_;
};

// Holds a Mutex for its scope.
class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex& mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_.lock(); }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex& mu_;
};

// Holds a Mutex for its scope, except between Unlock() and Lock(): for a
// wait (a host synchronisation, a user callback) that must not hold it.
class ABSL_SCOPED_LOCKABLE ReleasableMutexLock {
 public:
  explicit ReleasableMutexLock(Mutex& mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) {
    mu_.lock();
  }
  ~ReleasableMutexLock() ABSL_UNLOCK_FUNCTION() {
    if (held_) mu_.unlock();
  }
  ReleasableMutexLock(const ReleasableMutexLock&) = delete;
  ReleasableMutexLock& operator=(const ReleasableMutexLock&) = delete;

  void Unlock() ABSL_UNLOCK_FUNCTION() {
    mu_.unlock();
    held_ = false;
  }
  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() {
    mu_.lock();
    held_ = true;
  }

 private:
  Mutex& mu_;
  bool held_ = true;
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_COMMON_MUTEX_H_
