// The invariant checker every suite shares: unit tests, properties, fuzzers
// and the stress runner call the same functions, so a check added here
// guards all of them.
//
//  - CheckSnapshot: segments never overlap; blocks tile each segment exactly;
//    no two free neighbours of one stream were left unmerged; the stats
//    recomputed from the snapshot equal the allocator's counters (PyTorch's
//    check).
//  - LiveSet: a shadow model of live allocations (tcmalloc's idea): no two
//    overlap, each is aligned and, with a snapshot, lies in an allocated
//    block of a live segment (RMM's checks); each carries a content cookie
//    written at allocation and verified at free (mimalloc's), in the order
//    of the allocation's stream.
//  - CheckStreamOrder: the sim's stream-order checker found no memory
//    reused, unmapped or rewritten while work queued on a stream could
//    still touch it.
#ifndef GPUALLOC_HARNESS_INVARIANTS_INVARIANTS_H_
#define GPUALLOC_HARNESS_INVARIANTS_INVARIANTS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <vector>

#include "absl/status/status.h"
#include "allocator/backend/backend.h"
#include "allocator/backend/sim/sim_backend.h"
#include "allocator/resource/memory_resource.h"
#include "allocator/stats/memory_snapshot.h"
#include "allocator/stats/memory_stats.h"

namespace gpualloc::harness {

// OK, or FailedPrecondition naming the first broken invariant.
absl::Status CheckSnapshot(const MemorySnapshot& snapshot);

// Live allocations as the caller sees them. Not thread-safe: one per thread,
// or guard it.
class LiveSet {
 public:
  // Records `a`; error if it overlaps a live allocation or is misaligned.
  absl::Status Add(const Allocation& a, std::size_t alignment);
  // Forgets `a`; error if it was not live.
  absl::Status Remove(const Allocation& a);
  // Every live allocation lies inside an allocated block of `snapshot` that
  // starts at its pointer and is at least its size.
  absl::Status CheckAgainst(const MemorySnapshot& snapshot) const;

  std::size_t size() const { return live_.size(); }
  std::size_t bytes() const { return bytes_; }
  const std::map<std::uintptr_t, Allocation>& live() const { return live_; }

 private:
  std::map<std::uintptr_t, Allocation> live_;
  std::size_t bytes_ = 0;
};

// OK, or FailedPrecondition with the checker's report (both accesses of
// each violation).
absl::Status CheckStreamOrder(const SimBackend& sim);

// Makes `to` wait, on the device, for the work enqueued on `from` so far: an
// event recorded on `from` that `to` waits for (then destroyed). The user's
// side of the stream contract, as a workload does it; nothing when they are
// the same stream.
absl::Status OrderStreams(Backend& backend, Stream from, Stream to);

// Content cookies: a pattern derived from `seed` written over the first
// `bytes` of `a` through the backend (H2D on a.stream), and verified (D2H on
// a.stream) later; each waits for its stream. A
// mismatch means someone else wrote into the allocation: overlap or reuse
// while live.
absl::Status WriteCookie(Backend& backend, const Allocation& a, std::uint64_t seed,
                         std::size_t bytes);
// The cookie bytes for `seed` (for callers that stage them, e.g. through
// pinned memory), and the check of bytes read back from `a`.
std::vector<unsigned char> CookiePattern(std::uint64_t seed, std::size_t n);
absl::Status CheckCookieBytes(const Allocation& a, std::uint64_t seed, const unsigned char* seen,
                              std::size_t bytes);
absl::Status VerifyCookie(Backend& backend, const Allocation& a, std::uint64_t seed,
                          std::size_t bytes);

}  // namespace gpualloc::harness

#endif  // GPUALLOC_HARNESS_INVARIANTS_INVARIANTS_H_
