// DeterministicScheduler: runs a test's threads, the simulated device's
// stream workers and the allocator's lock acquisitions one at a time, in an
// order drawn from a seed, so that an interleaving is explored on purpose and
// replayed exactly.
//
// How it works: every participant is a real thread, but only the one holding
// the turn runs. At each scheduling point (acquiring an allocator Mutex, a
// stream finishing a task, a wait on a stream or event, Yield) the turn goes
// to a participant the strategy picks among those that can run:
//  - kRandomWalk: uniformly at random;
//  - kPct: PCT (Burckhardt et al., ASPLOS 2010): random distinct priorities,
//    the highest-priority runnable participant runs, and at `pct_depth - 1`
//    random steps the running participant drops below all others. Finds any
//    bug of depth d with probability at least 1/(n * k^(d-1)).
// Stream workers are participants too, so which stream progresses first, and
// so which event completes first, is chosen adversarially from the seed
// rather than left to timing: a later event may complete first whenever the
// streams allow it.
//
// Every choice is hashed into `trace_hash`; the same seed on the same program
// gives the same hash (deterministic_schedule_test checks it). A deadlock
// (participants left but none can run) is reported with the seed and every
// participant's name and state, then the process aborts.
//
// Thread-safety: Run is called once, from a thread that is not a participant;
// Spawn, Thread::Join and Mix from participants.
#ifndef GPUALLOC_HARNESS_CONCURRENCY_DETERMINISTIC_SCHEDULER_H_
#define GPUALLOC_HARNESS_CONCURRENCY_DETERMINISTIC_SCHEDULER_H_

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "allocator/common/cooperative_scheduler.h"

namespace gpualloc::harness {

enum class ScheduleStrategy { kRandomWalk, kPct };

absl::string_view ScheduleStrategyName(ScheduleStrategy strategy);
absl::StatusOr<ScheduleStrategy> ParseScheduleStrategy(absl::string_view name);

struct ScheduleOptions {
  std::uint64_t seed = 1;
  ScheduleStrategy strategy = ScheduleStrategy::kRandomWalk;
  // PCT: the bug depth aimed at (priority change points = depth - 1) and the
  // number of steps over which the change points are spread.
  int pct_depth = 3;
  std::uint64_t pct_expected_steps = 5000;
};

struct ScheduleResult {
  std::uint64_t trace_hash = 0;
  std::uint64_t steps = 0;        // scheduling decisions taken
  std::uint64_t switches = 0;     // decisions that moved the turn elsewhere
  int participants = 0;
  // "seed=7 strategy=pct steps=812 switches=301 participants=6 trace_hash=…"
  std::string Describe(const ScheduleOptions& options) const;
};

class DeterministicScheduler final : public CooperativeScheduler {
 public:
  explicit DeterministicScheduler(ScheduleOptions options);
  ~DeterministicScheduler() override;
  DeterministicScheduler(const DeterministicScheduler&) = delete;
  DeterministicScheduler& operator=(const DeterministicScheduler&) = delete;

  // Runs `body` as the first participant and returns when it and every thread
  // it spawned have finished. Call once.
  ScheduleResult Run(std::function<void()> body);

  // A participant thread started by Spawn. Join (or destroy) it from a
  // participant before the spawning body returns.
  class Thread {
   public:
    Thread(Thread&& other) noexcept;
    Thread& operator=(Thread&&) = delete;
    ~Thread();
    void Join();

   private:
    friend class DeterministicScheduler;
    Thread(DeterministicScheduler* scheduler, int id, std::thread thread);
    DeterministicScheduler* scheduler_;
    int id_;
    std::thread thread_;
  };
  Thread Spawn(absl::string_view name, std::function<void()> fn);

  // Mixes a value the test observed (an operation's outcome) into the trace
  // hash, so a divergence in behaviour shows even when choices coincide.
  void Mix(std::uint64_t value);

  const ScheduleOptions& options() const { return options_; }

  // CooperativeScheduler.
  void Yield() override;
  void BlockUntil(absl::FunctionRef<bool()> ready) override;
  int RegisterBackground(absl::string_view name) override;
  void Attach(int id) override;
  void Detach() override;

 private:
  enum class State { kNotStarted, kRunnable, kBlocked, kDone };
  struct Participant {
    std::string name;
    bool background = false;
    State state = State::kNotStarted;
    absl::FunctionRef<bool()>* ready = nullptr;  // while kBlocked
    std::uint64_t priority = 0;
  };

  int AddLocked(absl::string_view name, bool background);
  bool CanRunLocked(const Participant& p) const;
  // Hands the turn on (to `me` again possibly), then, unless `me` is done,
  // waits for it to come back.
  void SwitchLocked(std::unique_lock<std::mutex>& lock, int me);
  int ChooseLocked(int me);
  void RecordLocked(std::uint64_t value);
  [[noreturn]] void ReportDeadlockLocked(int me) const;
  bool DoneLocked(int id) const { return parts_[id].state == State::kDone; }

  const ScheduleOptions options_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Participant> parts_;
  int turn_ = -1;
  bool free_running_ = false;  // the run is over: participants run unscheduled
  std::mt19937_64 rng_;
  std::vector<std::uint64_t> change_points_;  // PCT steps, ascending
  std::uint64_t next_low_priority_ = 0;
  ScheduleResult result_;
};

}  // namespace gpualloc::harness

#endif  // GPUALLOC_HARNESS_CONCURRENCY_DETERMINISTIC_SCHEDULER_H_
