// CooperativeScheduler: the hook through which a test harness runs the
// allocator's threads one at a time, in an order it chooses from a seed, so
// that an interleaving that breaks an invariant replays exactly
// (harness/concurrency/deterministic_scheduler.h is the implementation).
//
// Production code never creates one. The allocator's Mutex and the simulated
// device's streams consult `Current()`, a thread-local that is null except on
// threads a harness has attached, so outside such a run the cost is one
// thread-local load per lock.
//
// Rules for code that calls into a scheduler (the allocator's Mutex and the
// sim's stream workers follow them):
//  - Yield() and BlockUntil() are called only while holding no plain
//    std::mutex: another participant may run before they return and could
//    otherwise block on that mutex outside the scheduler's sight.
//  - A `ready` predicate is evaluated on another participant's thread while
//    no participant runs; it must not block and must not call the scheduler.
#ifndef GPUALLOC_ALLOCATOR_COMMON_COOPERATIVE_SCHEDULER_H_
#define GPUALLOC_ALLOCATOR_COMMON_COOPERATIVE_SCHEDULER_H_

#include "absl/functional/function_ref.h"
#include "absl/strings/string_view.h"

namespace gpualloc {

class CooperativeScheduler {
 public:
  virtual ~CooperativeScheduler() = default;

  // The scheduler the calling thread participates in, or null.
  static CooperativeScheduler* Current() { return current_; }

  // A scheduling point: the scheduler may let another participant run first.
  virtual void Yield() = 0;
  // Returns once `ready()` holds, letting other participants run meanwhile.
  virtual void BlockUntil(absl::FunctionRef<bool()> ready) = 0;

  // Adds a background participant (a simulated stream's worker) that will run
  // on a thread about to be started; returns its id for Attach. A run ends
  // without waiting for background participants that are blocked.
  virtual int RegisterBackground(absl::string_view name) = 0;
  // First call on a participant's own thread: waits for its first turn.
  virtual void Attach(int id) = 0;
  // Last call on a participant's thread: it will not run again.
  virtual void Detach() = 0;

 protected:
  static void SetCurrent(CooperativeScheduler* scheduler) { current_ = scheduler; }

 private:
  // constinit: read without a thread-local wrapper call, on every lock.
  static constinit thread_local CooperativeScheduler* current_;
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_COMMON_COOPERATIVE_SCHEDULER_H_
