// StreamOrderChecker: a happens-before sanitizer for stream ordering, built
// into the simulated device.
//
// On a GPU, memory safety means stream order: memory must never be reused,
// unmapped or rewritten while device work queued on some stream may still
// touch it. The checker sees every asynchronous access the sim is asked to
// make, on byte ranges inside the device, so it judges the allocator's own
// reuse decisions, not just the program's (PyTorch's CUDA Stream Sanitizer
// works on tensors and trusts the allocator).
//
// The model (vector clocks, as in FastTrack/ThreadSanitizer):
//  - Actors: the host (one actor for the whole process: a synchronisation by
//    any thread is known to all, which can hide a race but never invents one)
//    and every stream. Each carries a vector clock.
//  - Work enqueued on stream S first joins what the host knows, then ticks
//    S's own entry; its accesses carry that epoch.
//  - RecordEvent captures S's clock in the event; StreamWaitEvent joins the
//    event's clock into the waiting stream; a host synchronisation (stream,
//    event, device, or an event query that answers "complete") joins into the
//    host.
//  - An access (actor a, epoch e) happens before a clock C iff C[a] >= e.
//
// Shadow state: an interval map over device, pinned and managed ranges with
// the last write and the reads since (one per actor), each with its actor,
// epoch, operation id and what it was.
//
// Violations (each names both accesses, the actors, the range and the
// allocation):
//  - two accesses, at least one a write, that happens-before does not order;
//  - an access to memory that is not allocated or not mapped when it runs;
//  - a release (Free, HostFree, FreeAsync, VmUnmap, VmRelease) of a range
//    with an access not ordered before it.
//
// Verdicts are logical: they depend on the order of calls, not on how fast
// the simulated streams run, so a test that asserts "no violation" fails on
// every run when the allocator forgets a wait.
//
// Thread-safe: one internal mutex; it never calls out while holding it.
#ifndef GPUALLOC_ALLOCATOR_BACKEND_SIM_STREAM_ORDER_CHECKER_H_
#define GPUALLOC_ALLOCATOR_BACKEND_SIM_STREAM_ORDER_CHECKER_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/types/span.h"
#include "allocator/backend/types.h"

namespace gpualloc {

// A vector clock: entry i is the last epoch of actor i known. Dense, since
// actors are few (the host and each stream).
using VectorClock = std::vector<std::uint64_t>;

// The allocation an access falls in, as the device knows it (for reports).
struct AllocationRef {
  std::uintptr_t base = 0;
  std::size_t bytes = 0;
  const char* kind = "memory";  // "device", "pinned", "managed", "virtual"
};

// One range an operation touches.
struct RangeAccess {
  std::uintptr_t begin = 0;
  std::size_t bytes = 0;
  AccessMode mode = AccessMode::kRead;
  AllocationRef allocation;
};

// One access as the shadow state remembers it. `what` is a static string.
struct AccessRecord {
  int actor = 0;
  std::uint64_t epoch = 0;
  std::uint64_t op = 0;  // operation id, in call order
  const char* what = "";
  AccessMode mode = AccessMode::kRead;
};

struct StreamOrderViolation {
  // kDestroyedStream: a call named a stream after DestroyStream. The sim
  // answers with an error, but a real runtime may crash on the stale handle
  // (the CUDA driver does), so code that relies on the error is a bug.
  enum class Kind { kUnorderedAccess, kUnmappedAccess, kUnorderedRelease, kDestroyedStream };
  Kind kind = Kind::kUnorderedAccess;
  std::uintptr_t begin = 0;  // the bytes both touch (kDestroyedStream: the handle
  std::uintptr_t end = 0;    // and the device)
  AllocationRef allocation;
  AccessRecord earlier;   // the access already recorded
  AccessRecord later;     // the new access, or the release
  std::string earlier_actor;
  std::string later_actor;

  // One paragraph naming both accesses, their actors, the range and the
  // allocation.
  std::string ToString() const;
};

struct StreamOrderStats {
  std::uint64_t operations = 0;       // operations whose accesses were checked
  std::uint64_t accesses_checked = 0; // ranges checked
  std::uint64_t violations = 0;       // all found (only the first are kept)
};

class StreamOrderChecker {
 public:
  struct Options {
    // Abort the process at the first violation, after printing its report.
    bool abort_on_violation = false;
    // Violations kept for Violations(); the count goes on beyond.
    std::size_t max_kept = 256;
  };
  explicit StreamOrderChecker(Options options);
  StreamOrderChecker(const StreamOrderChecker&) = delete;
  StreamOrderChecker& operator=(const StreamOrderChecker&) = delete;

  static constexpr int kHost = 0;

  // The actor of `stream` (created at first use; never reused).
  int ActorFor(Stream stream);

  // Work enqueued on `actor`'s stream that touches `accesses`. Returns the
  // operation's id.
  std::uint64_t Enqueue(int actor, absl::Span<const RangeAccess> accesses, const char* what);
  // The host touches `accesses` directly (pinned or managed memory).
  std::uint64_t HostAccess(absl::Span<const RangeAccess> accesses, const char* what);
  // `actor` (a stream, or kHost) ends the life of `range`: every access in it
  // must be ordered before. The shadow state of the range is dropped.
  void Release(int actor, std::uintptr_t begin, std::size_t bytes, const AllocationRef& allocation,
               const char* what);
  // Fresh memory: nothing that touched these addresses before counts.
  void Forget(std::uintptr_t begin, std::size_t bytes);
  // An access that found its memory gone when it ran.
  void ReportUnmapped(int actor, std::uint64_t op, const RangeAccess& access, const char* what);
  // A call that named `stream` after it was destroyed.
  void ReportDestroyedStream(Stream stream);

  // RecordEvent: the clock `actor`'s stream has now (after joining the host).
  VectorClock Capture(int actor);
  // StreamWaitEvent: `actor` waits for `clock`.
  void Wait(int actor, const VectorClock& clock);
  // The host learns `clock` (event synchronise or a completed query).
  void HostJoin(const VectorClock& clock);
  // The host waits for everything enqueued so far on each of `actors`.
  void HostJoinActors(absl::Span<const int> actors);

  StreamOrderStats stats() const;
  std::vector<StreamOrderViolation> Violations() const;
  // Every kept violation, one paragraph each; "" when there is none.
  std::string Report() const;

 private:
  struct Shadow {
    std::uintptr_t end = 0;
    bool written = false;
    AccessRecord write;
    std::vector<AccessRecord> reads;  // since the write, one per actor
    AllocationRef allocation;
  };
  using ShadowMap = std::map<std::uintptr_t, Shadow>;

  static bool Ordered(const AccessRecord& a, const VectorClock& clock) {
    return static_cast<std::size_t>(a.actor) < clock.size() && clock[a.actor] >= a.epoch;
  }
  static void Join(VectorClock& into, const VectorClock& from);
  VectorClock& ClockOf(int actor);
  std::uint64_t TickLocked(int actor);
  // Splits so that an entry starts at `at` (if one covers it).
  void SplitAt(std::uintptr_t at);
  void CheckAndRecordLocked(const AccessRecord& access, const VectorClock& clock,
                            const RangeAccess& range);
  void AddViolationLocked(StreamOrderViolation v);
  std::string ActorNameLocked(int actor) const;

  const Options options_;
  mutable std::mutex mu_;
  std::vector<VectorClock> clocks_;   // by actor; [0] is the host
  std::vector<Stream> actor_streams_; // by actor; [0] unused
  absl::flat_hash_map<Stream, int> actors_;
  ShadowMap shadow_;
  std::uint64_t next_op_ = 1;
  StreamOrderStats stats_;
  std::vector<StreamOrderViolation> kept_;
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_BACKEND_SIM_STREAM_ORDER_CHECKER_H_
