// The pinned host allocator when host memory for its own bookkeeping runs
// out: every public method returns a Status (nothing is thrown out of it),
// leaves the allocator as it was, and loses no block. Its own binary, because
// it replaces the global operator new: the N-th allocation of the test thread
// throws std::bad_alloc, for N = 0, 1, 2, ... until a whole script runs clean.
#include <cstdint>
#include <cstdlib>
#include <new>
#include <vector>

#include "absl/strings/str_format.h"
#include "allocator/host/host_only_backend_for_test.h"
#include "allocator/host/pinned_host_allocator.h"
#include "gtest/gtest.h"

namespace {
thread_local std::int64_t g_fail_countdown = -1;  // < 0: never fail
}  // namespace

void* operator new(std::size_t n) {
  if (g_fail_countdown >= 0 && g_fail_countdown-- == 0) throw std::bad_alloc();
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace gpualloc {
namespace {

// One script over every public method, with the N-th allocation failing.
// Returns how many allocations the script made (so the sweep knows when
// it has covered them all).
// With `shared_segments`, small blocks are carved from shared segments
// (splits and merges); without, each block is a segment of its own (every
// free a release, so evictions and queues).
std::int64_t RunScript(std::int64_t fail_at, bool shared_segments) {
  auto backend = std::make_shared<testing_support::HostOnlyBackend>();
  {
    PinnedHostOptions options;
    options.cache_limit_bytes = 16 * 1024;
    options.max_pending_per_owner = 2;
    if (!shared_segments) {
      options.small_request_max = 0;
      options.large_segment_round = kPinnedBlockAlignment;
    } else {
      options.small_segment_bytes = 64 * 1024;
    }
    PinnedHostAllocator pinned(backend, options);
    std::vector<PinnedBlock> live;
    live.reserve(64);
    const Stream stream{7, 0};
    g_fail_countdown = fail_at;
    for (int round = 0; round < 3; ++round) {
      for (int i = 0; i < 6; ++i) {
        absl::StatusOr<PinnedBlock> b = pinned.Allocate(4096 * (1 + i % 3), i % 2);
        if (b.ok()) {
          live.push_back(*b);
        } else {
          EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted) << b.status();
        }
      }
      for (std::size_t i = 0; i < live.size(); i += 2) {
        const absl::Status st = pinned.RecordStream(live[i], stream);
        EXPECT_TRUE(st.ok() || st.code() == absl::StatusCode::kResourceExhausted) << st;
      }
      for (auto it = live.begin(); it != live.end();) {
        const absl::Status st = pinned.Deallocate(*it);
        if (st.ok()) {
          it = live.erase(it);
        } else {
          EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
          ++it;  // still ours: freed later
        }
      }
      pinned.OnDeviceCurrent(1);
      pinned.Flush(round == 2).IgnoreError();
    }
    const std::int64_t left = g_fail_countdown;
    g_fail_countdown = -1;
    // Whatever failed, everything can still be freed and released.
    for (const PinnedBlock& b : live) EXPECT_TRUE(pinned.Deallocate(b).ok());
    EXPECT_TRUE(pinned.Flush(/*release_cache=*/true).ok());
    const PinnedHostStats s = pinned.stats();
    EXPECT_EQ(s.live_bytes, 0u);
    EXPECT_EQ(s.cached_bytes, 0u);
    EXPECT_EQ(s.pending_blocks, 0u);
    EXPECT_EQ(s.in_flight_blocks, 0u);
    if (left >= 0) return fail_at;  // the failure never came: the script is covered
  }
  EXPECT_EQ(backend->outstanding(), 0) << "a pinned block was lost (fail at " << fail_at << ")";
  return -1;
}

void Sweep(bool shared_segments) {
  std::int64_t n = 0;
  for (; n < 5000; ++n) {
    bool threw = false;
    try {
      if (RunScript(n, shared_segments) >= 0) break;
    } catch (...) {
      threw = true;
    }
    ASSERT_FALSE(threw) << "an exception escaped with allocation " << n << " failing";
    if (::testing::Test::HasFailure()) break;
  }
  EXPECT_GT(n, 20) << "the sweep covered too few allocations to mean anything";
  EXPECT_LT(n, 5000) << "the script never ran to the end without a failure";
}

TEST(PinnedHostAllocator, BookkeepingThatRunsOutOfMemoryThrowsNothingAndLosesNothing) {
  Sweep(/*shared_segments=*/false);
}

TEST(PinnedHostAllocator, SplitsAndMergesThatRunOutOfMemoryThrowNothingAndLoseNothing) {
  Sweep(/*shared_segments=*/true);
}

}  // namespace
}  // namespace gpualloc
