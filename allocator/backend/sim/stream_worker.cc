#include "allocator/backend/sim/stream_worker.h"

#include <utility>

namespace gpualloc {

SimStreamWorker::SimStreamWorker(DeviceIndex device) : device_(device) {
  thread_ = std::thread([this] { Run(); });
}

SimStreamWorker::~SimStreamWorker() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  work_cv_.notify_all();
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
  std::unique_lock<std::mutex> lock(mu_);
  done_cv_.wait(lock, [&] { return completed_ >= seq; });
}

std::uint64_t SimStreamWorker::task_exceptions() const {
  std::lock_guard<std::mutex> lock(mu_);
  return task_exceptions_;
}

void SimStreamWorker::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    work_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping and drained
    std::function<void()> task = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    bool threw = false;
    try {
      task();
    } catch (...) {
      threw = true;
    }
    lock.lock();
    if (threw) ++task_exceptions_;
    ++completed_;
    done_cv_.notify_all();
  }
}

}  // namespace gpualloc
