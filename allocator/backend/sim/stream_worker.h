// One simulated stream: a worker thread that runs enqueued work in order,
// asynchronously to the thread that enqueued it, like a GPU stream. Every
// task gets a sequence number; an event is "the stream has passed seq N".
//
// Given a CooperativeScheduler, the worker is one of its participants: it runs
// a task only when the scheduler picks it, so which stream makes progress
// first (and so which event completes first) is the scheduler's choice, and
// waits on it from participants go through the scheduler.
//
// Thread-safe: any thread may enqueue and wait.
#ifndef GPUALLOC_ALLOCATOR_BACKEND_SIM_STREAM_WORKER_H_
#define GPUALLOC_ALLOCATOR_BACKEND_SIM_STREAM_WORKER_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "allocator/backend/types.h"
#include "allocator/common/cooperative_scheduler.h"

namespace gpualloc {

class SimStreamWorker {
 public:
  // `scheduler` (optional, must outlive the worker) drives the worker thread.
  explicit SimStreamWorker(DeviceIndex device, CooperativeScheduler* scheduler = nullptr);
  // Runs all enqueued work, then stops the thread.
  ~SimStreamWorker();
  SimStreamWorker(const SimStreamWorker&) = delete;
  SimStreamWorker& operator=(const SimStreamWorker&) = delete;

  DeviceIndex device() const { return device_; }
  // The stream-order checker's actor for this stream (set once, at creation).
  int checker_actor() const { return checker_actor_; }
  void set_checker_actor(int actor) { checker_actor_ = actor; }

  // Appends `task` and returns its sequence number (1, 2, ...). Tasks must not
  // throw; one that does is stopped at the worker and counted.
  std::uint64_t Enqueue(std::function<void()> task);
  // Sequence number of the last task enqueued so far (0 if none).
  std::uint64_t last_enqueued() const;
  // True when every task up to and including `seq` has run.
  bool Reached(std::uint64_t seq) const;
  // Blocks until Reached(seq).
  void WaitFor(std::uint64_t seq) const;
  // Blocks until all work enqueued before the call has run.
  void Drain() const { WaitFor(last_enqueued()); }
  std::uint64_t task_exceptions() const;

 private:
  void Run();
  void RunScheduled();
  // Runs and retires the task at the front (mu_ held on entry and on return).
  void RunFront(std::unique_lock<std::mutex>& lock);
  // True when the calling thread must wait through the scheduler.
  bool Scheduled() const {
    return scheduler_ != nullptr && CooperativeScheduler::Current() == scheduler_;
  }

  const DeviceIndex device_;
  int checker_actor_ = 0;
  CooperativeScheduler* const scheduler_;
  mutable std::mutex mu_;
  mutable std::condition_variable work_cv_;
  mutable std::condition_variable done_cv_;
  std::deque<std::function<void()>> queue_;
  std::uint64_t enqueued_ = 0;
  std::uint64_t completed_ = 0;
  std::uint64_t task_exceptions_ = 0;
  bool stopping_ = false;
  bool exited_ = false;  // scheduled mode: the thread has left its loop
  std::thread thread_;
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_BACKEND_SIM_STREAM_WORKER_H_
