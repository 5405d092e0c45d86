// Algebraic properties of the allocator's arithmetic and block structure.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "allocator/backend/sim/sim_backend.h"
#include "allocator/caching/caching_allocator.h"
#include "allocator/common/checked_math.h"
#include "harness/invariants/invariants.h"
#include "gtest/gtest.h"
#include "rapidcheck.h"
#include "rapidcheck/gtest.h"

namespace gpualloc {
namespace {

RC_GTEST_PROP(CheckedMath, RoundUpIsTheSmallestMultipleAtLeastN, (std::size_t n)) {
  const std::size_t alignment = *rc::gen::element<std::size_t>(1, 2, 256, 512, 4096, 3, 1000);
  const std::optional<std::size_t> r = CheckedRoundUp(n, alignment);
  if (!r) {
    // Only when the multiple does not fit.
    RC_ASSERT(n > std::numeric_limits<std::size_t>::max() - (alignment - 1));
    return;
  }
  RC_ASSERT(*r >= n);
  RC_ASSERT(*r % alignment == 0);
  RC_ASSERT(*r - n < alignment);
}

RC_GTEST_PROP(CheckedMath, AddAndMulNeverWrap, (std::size_t a, std::size_t b)) {
  const std::optional<std::size_t> sum = CheckedAdd(a, b);
  RC_ASSERT(sum.has_value() == (a <= std::numeric_limits<std::size_t>::max() - b));
  if (sum) RC_ASSERT(*sum - a == b);
  const std::optional<std::size_t> product = CheckedMul(a, b);
  if (product && a != 0) RC_ASSERT(*product / a == b);
  if (!product) RC_ASSERT(a != 0 && b > std::numeric_limits<std::size_t>::max() / a);
}

// Allocation rounds every request up to the block size and no further.
RC_GTEST_PROP(CachingAllocatorAlgebra, BlockSizeIsTheRequestRoundedToTheMinimumBlock, ()) {
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(1, 64 << 20));
  auto cache = CachingAllocator::Create(sim, 0, {}).value();
  const std::size_t bytes = *rc::gen::inRange<std::size_t>(1, 1 << 20);
  Allocation a = cache->Allocate(bytes).value();
  const MemorySnapshot snap = cache->Snapshot();
  RC_ASSERT(snap.segments.size() == 1u);
  RC_ASSERT(snap.segments[0].blocks[0].size == *CheckedRoundUp(bytes, 512));
  RC_ASSERT(cache->Deallocate(a).ok());
}

// Splitting then freeing in any order restores the whole segment.
RC_GTEST_PROP(CachingAllocatorAlgebra, SplitThenFreeInAnyOrderRestoresTheSegment, ()) {
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(1, 64 << 20));
  auto cache = CachingAllocator::Create(sim, 0, {}).value();
  const auto sizes = *rc::gen::container<std::vector<std::size_t>>(
      *rc::gen::inRange(1, 12), rc::gen::inRange<std::size_t>(1, 128 * 1024));
  std::vector<Allocation> live;
  for (std::size_t s : sizes) live.push_back(cache->Allocate(s).value());
  RC_ASSERT(cache->Snapshot().segments.size() == 1u);
  const std::uint64_t seed = *rc::gen::arbitrary<std::uint64_t>();
  std::shuffle(live.begin(), live.end(), std::mt19937_64(seed));
  for (const Allocation& a : live) {
    RC_ASSERT(cache->Deallocate(a).ok());
    RC_ASSERT(harness::CheckSnapshot(cache->Snapshot()).ok());
  }
  const MemorySnapshot snap = cache->Snapshot();
  RC_ASSERT(snap.segments.size() == 1u);
  RC_ASSERT(snap.segments[0].blocks.size() == 1u);
  RC_ASSERT(snap.segments[0].blocks[0].size == snap.segments[0].size);
}

// With the cache emptied, what stays reserved depends only on what is live,
// not on the order of the frees that came before.
RC_GTEST_PROP(CachingAllocatorAlgebra, ReservedAfterEmptyCacheIsIndependentOfFreeOrder, ()) {
  const auto sizes = *rc::gen::container<std::vector<std::size_t>>(
      *rc::gen::inRange(2, 16), rc::gen::inRange<std::size_t>(1, 12 << 20));
  const std::size_t keep = *rc::gen::inRange<std::size_t>(0, sizes.size());
  auto reserved_after = [&](std::uint64_t order_seed) {
    auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(1, 512 << 20));
    auto cache = CachingAllocator::Create(sim, 0, {}).value();
    std::vector<Allocation> live;
    for (std::size_t s : sizes) live.push_back(cache->Allocate(s).value());
    std::vector<std::size_t> order(sizes.size() - 1);
    for (std::size_t i = 0, j = 0; i < sizes.size(); ++i) {
      if (i != keep) order[j++] = i;
    }
    std::shuffle(order.begin(), order.end(), std::mt19937_64(order_seed));
    for (std::size_t i : order) RC_ASSERT(cache->Deallocate(live[i]).ok());
    RC_ASSERT(cache->EmptyCache().ok());
    const std::int64_t reserved = cache->stats().reserved_bytes.current;
    RC_ASSERT(cache->Deallocate(live[keep]).ok());
    return reserved;
  };
  RC_ASSERT(reserved_after(1) == reserved_after(*rc::gen::arbitrary<std::uint64_t>()));
}

}  // namespace
}  // namespace gpualloc
