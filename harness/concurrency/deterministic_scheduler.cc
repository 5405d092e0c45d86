#include "harness/concurrency/deterministic_scheduler.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_format.h"

namespace gpualloc::harness {
namespace {

// The participant id of the calling thread within its scheduler.
thread_local int tls_participant = -1;

constexpr std::uint64_t kFnvOffset = 14695981039346656037ull;
constexpr std::uint64_t kFnvPrime = 1099511628211ull;

const char* StateName(int state) {
  static const char* const kNames[] = {"not started", "runnable", "blocked", "done"};
  return kNames[state];
}

}  // namespace

absl::string_view ScheduleStrategyName(ScheduleStrategy strategy) {
  return strategy == ScheduleStrategy::kPct ? "pct" : "random";
}

absl::StatusOr<ScheduleStrategy> ParseScheduleStrategy(absl::string_view name) {
  if (name == "random") return ScheduleStrategy::kRandomWalk;
  if (name == "pct") return ScheduleStrategy::kPct;
  return absl::InvalidArgumentError(
      absl::StrFormat("unknown schedule strategy '%s' (expected random or pct)", name));
}

std::string ScheduleResult::Describe(const ScheduleOptions& options) const {
  return absl::StrFormat("seed=%d strategy=%s steps=%d switches=%d participants=%d "
                         "trace_hash=%016x",
                         options.seed, ScheduleStrategyName(options.strategy), steps, switches,
                         participants, trace_hash);
}

DeterministicScheduler::DeterministicScheduler(ScheduleOptions options)
    : options_(options), rng_(options.seed) {
  result_.trace_hash = kFnvOffset;
  if (options_.strategy == ScheduleStrategy::kPct) {
    const int changes = std::max(0, options_.pct_depth - 1);
    const std::uint64_t span = std::max<std::uint64_t>(1, options_.pct_expected_steps);
    for (int i = 0; i < changes; ++i) change_points_.push_back(1 + rng_() % span);
    std::sort(change_points_.begin(), change_points_.end());
    next_low_priority_ = static_cast<std::uint64_t>(changes);
  }
}

DeterministicScheduler::~DeterministicScheduler() = default;

ScheduleResult DeterministicScheduler::Run(std::function<void()> body) {
  int id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    id = AddLocked("main", /*background=*/false);
    turn_ = id;
  }
  std::thread main([this, id, &body] {
    Attach(id);
    body();
    Detach();
  });
  {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return free_running_; });
  }
  main.join();
  std::lock_guard<std::mutex> lock(mu_);
  result_.participants = static_cast<int>(parts_.size());
  return result_;
}

DeterministicScheduler::Thread DeterministicScheduler::Spawn(absl::string_view name,
                                                             std::function<void()> fn) {
  int id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    id = AddLocked(name, /*background=*/false);
  }
  std::thread thread([this, id, fn = std::move(fn)] {
    Attach(id);
    fn();
    Detach();
  });
  return Thread(this, id, std::move(thread));
}

DeterministicScheduler::Thread::Thread(DeterministicScheduler* scheduler, int id,
                                       std::thread thread)
    : scheduler_(scheduler), id_(id), thread_(std::move(thread)) {}

DeterministicScheduler::Thread::Thread(Thread&& other) noexcept
    : scheduler_(other.scheduler_), id_(other.id_), thread_(std::move(other.thread_)) {}

DeterministicScheduler::Thread::~Thread() { Join(); }

void DeterministicScheduler::Thread::Join() {
  if (!thread_.joinable()) return;
  // Evaluated under the scheduler's lock, as every `ready` is.
  scheduler_->BlockUntil([this] { return scheduler_->DoneLocked(id_); });
  thread_.join();
}

void DeterministicScheduler::Mix(std::uint64_t value) {
  std::lock_guard<std::mutex> lock(mu_);
  RecordLocked(value ^ 0x9e3779b97f4a7c15ull);
}

void DeterministicScheduler::Yield() {
  if (tls_participant < 0) return;  // not a participant: nothing to hand over
  std::unique_lock<std::mutex> lock(mu_);
  if (free_running_) return;
  SwitchLocked(lock, tls_participant);
}

void DeterministicScheduler::BlockUntil(absl::FunctionRef<bool()> ready) {
  std::unique_lock<std::mutex> lock(mu_);
  const int me = tls_participant;
  if (!free_running_ && me >= 0) {
    if (ready()) return;
    parts_[me].state = State::kBlocked;
    parts_[me].ready = &ready;
    SwitchLocked(lock, me);
    parts_[me].ready = nullptr;
    parts_[me].state = State::kRunnable;
    if (!free_running_) return;  // the turn came back: `ready` held when chosen
  }
  // After the run, or on a thread that is not a participant: poll.
  while (!ready()) {
    lock.unlock();
    std::this_thread::sleep_for(std::chrono::microseconds(50));
    lock.lock();
  }
}

int DeterministicScheduler::RegisterBackground(absl::string_view name) {
  std::lock_guard<std::mutex> lock(mu_);
  return AddLocked(name, /*background=*/true);
}

void DeterministicScheduler::Attach(int id) {
  SetCurrent(this);
  tls_participant = id;
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this, id] { return turn_ == id || free_running_; });
  parts_[id].state = State::kRunnable;
}

void DeterministicScheduler::Detach() {
  const int me = tls_participant;
  {
    std::unique_lock<std::mutex> lock(mu_);
    parts_[me].state = State::kDone;
    if (!free_running_ && turn_ == me) SwitchLocked(lock, me);
    cv_.notify_all();
  }
  tls_participant = -1;
  SetCurrent(nullptr);
}

int DeterministicScheduler::AddLocked(absl::string_view name, bool background) {
  Participant p;
  p.name = std::string(name);
  p.background = background;
  // Initial PCT priorities sit above every value a change point assigns.
  p.priority = next_low_priority_ + 1 + (rng_() >> 1);
  parts_.push_back(std::move(p));
  return static_cast<int>(parts_.size()) - 1;
}

bool DeterministicScheduler::CanRunLocked(const Participant& p) const {
  switch (p.state) {
    case State::kNotStarted:
    case State::kRunnable:
      return true;
    case State::kBlocked:
      return (*p.ready)();
    case State::kDone:
      return false;
  }
  return false;
}

void DeterministicScheduler::SwitchLocked(std::unique_lock<std::mutex>& lock, int me) {
  const int next = ChooseLocked(me);
  if (next < 0) {
    for (const Participant& p : parts_) {
      if (!p.background && p.state != State::kDone) ReportDeadlockLocked(me);
    }
    // Only idle stream workers are left: the run is over.
    free_running_ = true;
    cv_.notify_all();
    return;
  }
  if (next != me) {
    ++result_.switches;
    turn_ = next;
    cv_.notify_all();
  }
  if (parts_[me].state == State::kDone) return;
  cv_.wait(lock, [this, me] { return turn_ == me || free_running_; });
}

int DeterministicScheduler::ChooseLocked(int me) {
  ++result_.steps;
  std::vector<int> runnable;
  for (int i = 0; i < static_cast<int>(parts_.size()); ++i) {
    if (CanRunLocked(parts_[i])) runnable.push_back(i);
  }
  if (runnable.empty()) return -1;
  int next = runnable.front();
  if (options_.strategy == ScheduleStrategy::kRandomWalk) {
    next = runnable[rng_() % runnable.size()];
  } else {
    while (!change_points_.empty() && change_points_.front() <= result_.steps) {
      change_points_.erase(change_points_.begin());
      if (parts_[me].state != State::kDone) parts_[me].priority = next_low_priority_--;
    }
    for (int i : runnable) {
      if (parts_[i].priority > parts_[next].priority) next = i;
    }
  }
  RecordLocked(static_cast<std::uint64_t>(next));
  return next;
}

void DeterministicScheduler::RecordLocked(std::uint64_t value) {
  for (int byte = 0; byte < 8; ++byte) {
    result_.trace_hash ^= (value >> (8 * byte)) & 0xff;
    result_.trace_hash *= kFnvPrime;
  }
}

void DeterministicScheduler::ReportDeadlockLocked(int me) const {
  std::fprintf(stderr,
               "deterministic schedule: DEADLOCK at step %llu (seed=%llu strategy=%s): no "
               "participant can run; participant #%d (%s) was the last to run.\n",
               static_cast<unsigned long long>(result_.steps),
               static_cast<unsigned long long>(options_.seed),
               std::string(ScheduleStrategyName(options_.strategy)).c_str(), me,
               parts_[me].name.c_str());
  for (std::size_t i = 0; i < parts_.size(); ++i) {
    std::fprintf(stderr, "  #%zu %s: %s\n", i, parts_[i].name.c_str(),
                 StateName(static_cast<int>(parts_[i].state)));
  }
  std::fflush(stderr);
  std::abort();
}

}  // namespace gpualloc::harness
