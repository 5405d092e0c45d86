#include "allocator/backend/sim/stream_worker.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace gpualloc {

SimStreamWorker::SimStreamWorker(DeviceIndex device, CooperativeScheduler* scheduler)
    : device_(device), scheduler_(scheduler) {
  if (scheduler_ == nullptr) {
    thread_ = std::thread([this] { Run(); });
    return;
  }
  const int id = scheduler_->RegisterBackground(absl::StrCat("stream@device", device));
  thread_ = std::thread([this, id] {
    scheduler_->Attach(id);
    RunScheduled();
    scheduler_->Detach();
  });
}

SimStreamWorker::~SimStreamWorker() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  work_cv_.notify_all();
  // The scheduled thread leaves only when picked; joining first would hold
  // the turn it needs.
  if (Scheduled()) {
    scheduler_->BlockUntil([this] {
      std::lock_guard<std::mutex> lock(mu_);
      return exited_;
    });
  }
  thread_.join();
}

std::uint64_t SimStreamWorker::Enqueue(std::function<void()> task) {
  std::uint64_t seq;
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(task));
    seq = ++enqueued_;
  }
  work_cv_.notify_one();
  return seq;
}

std::uint64_t SimStreamWorker::last_enqueued() const {
  std::lock_guard<std::mutex> lock(mu_);
  return enqueued_;
}

bool SimStreamWorker::Reached(std::uint64_t seq) const {
  std::lock_guard<std::mutex> lock(mu_);
  return completed_ >= seq;
}

void SimStreamWorker::WaitFor(std::uint64_t seq) const {
  if (Scheduled()) {
    scheduler_->BlockUntil([this, seq] { return Reached(seq); });
    return;
  }
  std::unique_lock<std::mutex> lock(mu_);
  done_cv_.wait(lock, [&] { return completed_ >= seq; });
}

std::uint64_t SimStreamWorker::task_exceptions() const {
  std::lock_guard<std::mutex> lock(mu_);
  return task_exceptions_;
}

void SimStreamWorker::RunScheduled() {
  for (;;) {
    scheduler_->BlockUntil([this] {
      std::lock_guard<std::mutex> lock(mu_);
      return stopping_ || !queue_.empty();
    });
    std::unique_lock<std::mutex> lock(mu_);
    if (queue_.empty()) {
      exited_ = true;
      return;
    }
    RunFront(lock);
    lock.unlock();
    // One task per turn: every task boundary is a point where another stream
    // or thread may run first, so events complete in whatever order the
    // scheduler picks among those the streams allow.
    scheduler_->Yield();
  }
}

void SimStreamWorker::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    work_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping and drained
    RunFront(lock);
  }
}

void SimStreamWorker::RunFront(std::unique_lock<std::mutex>& lock) {
  std::function<void()> task = std::move(queue_.front());
  queue_.pop_front();
  lock.unlock();
  bool threw = false;
  try {
    task();
  } catch (...) {
    threw = true;
  }
  // Destroyed unlocked: a task may hold the last reference to another worker,
  // whose destructor waits for that worker's thread.
  task = nullptr;
  lock.lock();
  if (threw) ++task_exceptions_;
  ++completed_;
  done_cv_.notify_all();  // also for waiters that are not participants
}

}  // namespace gpualloc
