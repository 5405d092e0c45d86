#include <vector>

#include "allocator/backend/sim/sim_backend.h"
#include "allocator/caching/arena_resource.h"
#include "allocator/caching/caching_allocator.h"
#include "allocator/caching/size_class_pool.h"
#include "allocator/resource/backend_resource.h"
#include "gtest/gtest.h"
#include "harness/testing/failing_memory_resource.h"

namespace gpualloc {
namespace {

constexpr std::size_t kKiB = 1024;
constexpr std::size_t kMiB = 1024 * 1024;

struct Fixture {
  std::shared_ptr<SimBackend> sim =
      std::make_shared<SimBackend>(SimOptions::WithDevices(1, 64 * kMiB));
  std::shared_ptr<BackendResource> raw = std::make_shared<BackendResource>(sim, 0);
};

SizeClassOptions SmallSlabs() {
  SizeClassOptions o;
  o.classes = {256, 1024, 4096};
  o.slab_bytes = 64 * kKiB;
  o.max_cached_empty_bytes = 64 * kKiB;
  return o;
}

TEST(SizeClassPool, RoundsToTheClassAndReusesOnTheSameStream) {
  Fixture f;
  auto pool = SizeClassPool::Create(f.raw, f.sim, SmallSlabs()).value();
  Allocation a = pool->Allocate(300).value();
  ASSERT_TRUE(pool->Deallocate(a).ok());
  Allocation b = pool->Allocate(900).value();  // same 1 KiB class
  EXPECT_EQ(b.ptr, a.ptr);
  const std::vector<SizeClassStats> s = pool->class_stats();
  EXPECT_EQ(s[1].class_bytes, 1024u);
  EXPECT_EQ(s[1].hits, 1u);
  EXPECT_EQ(s[1].misses, 1u);
  EXPECT_EQ(s[1].slabs, 1u);
  // The resource-wide stats are the sum over the classes, exactly.
  const MemoryStats total = pool->stats();
  EXPECT_EQ(total.cache_hits, 1u);
  EXPECT_EQ(total.cache_misses, 1u);
  EXPECT_EQ(total.active_blocks.current, 1);
  EXPECT_EQ(total.allocated_bytes.current, 1024);
  EXPECT_EQ(total.requested_bytes.current, 900);
  EXPECT_EQ(total.segments.current, 1);
  ASSERT_TRUE(pool->Deallocate(b).ok());
  EXPECT_EQ(pool->stats().active_blocks.current, 0);
}

// Found by the op properties once memory was used on streams: the pool took
// every slab on the default stream and carved its room for any stream, so a
// block the caching allocator had just legally reused on the default stream,
// with a read still queued there, went to another stream with no wait.
TEST(SizeClassPool, ASlabsRoomGoesOnlyToTheStreamItWasObtainedOn) {
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(1, 64 * kMiB));
  std::shared_ptr<CachingAllocator> cache = CachingAllocator::Create(sim, 0, {}).value();
  auto pool = SizeClassPool::Create(cache, sim, SmallSlabs()).value();
  const Stream s = Stream::Default(0);
  const Stream t = sim->CreateStream(0).value();
  Allocation big = cache->Allocate(64 * kKiB, s).value();  // the block the slab will reuse
  ASSERT_TRUE(sim->LaunchKernel(s, {{big.ptr, big.bytes, AccessMode::kRead, 0}}, 1'000'000).ok());
  ASSERT_TRUE(cache->Deallocate(big).ok());
  for (Stream on : {t, s}) {
    Allocation a = pool->Allocate(100, on).value();
    ASSERT_TRUE(sim->MemsetAsync(a.ptr, 1, a.bytes, on).ok());
    ASSERT_TRUE(pool->Deallocate(a).ok());
  }
  absl::Status st = sim->CheckStreamOrder();
  EXPECT_TRUE(st.ok()) << st;
  ASSERT_TRUE(pool->Trim().ok());
  ASSERT_TRUE(cache->EmptyCache().ok());
  ASSERT_TRUE(sim->DestroyStream(t).ok());
}

TEST(ArenaResource, AChunkPacksOnlyRequestsOfTheStreamItWasObtainedOn) {
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(1, 64 * kMiB));
  std::shared_ptr<CachingAllocator> cache = CachingAllocator::Create(sim, 0, {}).value();
  ArenaOptions o;
  o.pack_threshold = 64 * kKiB;
  o.chunk_bytes = 1 * kMiB;
  auto arena = ArenaResource::Create(cache, o).value();
  const Stream s = Stream::Default(0);
  const Stream t = sim->CreateStream(0).value();
  Allocation big = cache->Allocate(1 * kMiB, s).value();  // the block a chunk will reuse
  ASSERT_TRUE(sim->LaunchKernel(s, {{big.ptr, big.bytes, AccessMode::kRead, 0}}, 1'000'000).ok());
  ASSERT_TRUE(cache->Deallocate(big).ok());
  std::vector<Allocation> packed;
  for (Stream on : {s, t}) {  // s obtains the chunk; t must not share it unordered
    Allocation a = arena->Allocate(4 * kKiB, on).value();
    ASSERT_TRUE(sim->MemsetAsync(a.ptr, 1, a.bytes, on).ok());
    packed.push_back(a);
  }
  absl::Status st = sim->CheckStreamOrder();
  EXPECT_TRUE(st.ok()) << st;
  for (const Allocation& a : packed) ASSERT_TRUE(arena->Deallocate(a).ok());
  ASSERT_TRUE(cache->EmptyCache().ok());
  ASSERT_TRUE(sim->DestroyStream(t).ok());
}

TEST(SizeClassPool, BlocksFreedOnOneStreamAreNotHandedToAnother) {
  Fixture f;
  auto pool = SizeClassPool::Create(f.raw, f.sim, SmallSlabs()).value();
  Stream t = f.sim->CreateStream(0).value();
  Allocation a = pool->Allocate(256).value();
  ASSERT_TRUE(pool->Deallocate(a).ok());
  Allocation on_t = pool->Allocate(256, t).value();
  EXPECT_NE(on_t.ptr, a.ptr);
  ASSERT_TRUE(pool->Deallocate(on_t).ok());
  ASSERT_TRUE(f.sim->DestroyStream(t).ok());
}

TEST(SizeClassPool, LargeRequestsPassThroughToTheUpstream) {
  Fixture f;
  auto pool = SizeClassPool::Create(f.raw, f.sim, SmallSlabs()).value();
  const std::uint64_t before = f.raw->stats().upstream_allocs;
  Allocation big = pool->Allocate(5000).value();
  EXPECT_EQ(f.raw->stats().upstream_allocs, before + 1);
  EXPECT_EQ(pool->stats().allocated_bytes.current, 5000);
  ASSERT_TRUE(pool->Deallocate(big).ok());
  EXPECT_FALSE(pool->Deallocate(big).ok()) << "double free of a pass-through";
}

TEST(SizeClassPool, EmptySlabsBeyondTheBudgetGoBackLeastRecentlyUsedFirst) {
  Fixture f;
  auto pool = SizeClassPool::Create(f.raw, f.sim, SmallSlabs()).value();
  std::vector<Allocation> blocks;
  for (int i = 0; i < 128; ++i) blocks.push_back(pool->Allocate(1024).value());  // two slabs
  EXPECT_EQ(pool->class_stats()[1].slabs, 2u);
  // Recency is by allocation: the slab of blocks[64..127] was used last.
  const auto recent_slab = reinterpret_cast<std::uintptr_t>(blocks[64].ptr);
  for (int i = 127; i >= 0; --i) ASSERT_TRUE(pool->Deallocate(blocks[i]).ok());
  EXPECT_EQ(pool->class_stats()[1].returns, 1u) << "128 KiB empty > 64 KiB budget";
  Allocation again = pool->Allocate(1024).value();
  EXPECT_GE(reinterpret_cast<std::uintptr_t>(again.ptr), recent_slab);
  EXPECT_LT(reinterpret_cast<std::uintptr_t>(again.ptr), recent_slab + 64 * kKiB)
      << "the most recently used slab stayed";
  ASSERT_TRUE(pool->Deallocate(again).ok());
  ASSERT_TRUE(pool->Trim().ok());
  EXPECT_EQ(pool->class_stats()[1].slabs, 0u);
  EXPECT_EQ(f.sim->Accounting().devices[0].device_bytes, 0u);
}

TEST(SizeClassPool, RejectsBadOptionsAndBadFrees) {
  Fixture f;
  SizeClassOptions o = SmallSlabs();
  o.classes = {1024, 256};
  EXPECT_FALSE(SizeClassPool::Create(f.raw, f.sim, o).ok()) << "not ascending";
  o.classes = {300};
  EXPECT_FALSE(SizeClassPool::Create(f.raw, f.sim, o).ok()) << "not a multiple of 256";
  auto pool = SizeClassPool::Create(f.raw, f.sim, SmallSlabs()).value();
  Allocation a = pool->Allocate(100).value();
  EXPECT_FALSE(pool->Deallocate(Allocation{a.ptr, 2000, a.stream}).ok()) << "wrong size";
  ASSERT_TRUE(pool->Deallocate(a).ok());
  EXPECT_FALSE(pool->Deallocate(a).ok()) << "double free";
}

ArenaOptions SmallArena() {
  ArenaOptions o;
  o.pack_threshold = 1 * kMiB;
  o.chunk_bytes = 8 * kMiB;
  return o;
}

TEST(ArenaResource, PacksSmallTensorsAtPageAlignment) {
  Fixture f;
  auto arena = ArenaResource::Create(f.raw, SmallArena()).value();
  Allocation a = arena->Allocate(1000).value();
  Allocation b = arena->Allocate(5000).value();
  Allocation c = arena->Allocate(100).value();
  for (const Allocation& x : {a, b, c}) {
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(x.ptr) % 4096, 0u) << "page-aligned address";
  }
  EXPECT_EQ(static_cast<char*>(b.ptr) - static_cast<char*>(a.ptr), 4096);
  EXPECT_EQ(static_cast<char*>(c.ptr) - static_cast<char*>(b.ptr), 8192);
  const ArenaStats s = arena->arena_stats();
  EXPECT_EQ(s.chunks, 1u);
  EXPECT_EQ(s.packed_tensors, 3u);
  EXPECT_EQ(f.raw->stats().upstream_allocs, 1u) << "one chunk for three tensors";
  for (const Allocation& x : {a, b, c}) ASSERT_TRUE(arena->Deallocate(x).ok());
  EXPECT_EQ(arena->arena_stats().chunks, 0u) << "the chunk went back with its last tensor";
  EXPECT_EQ(f.sim->Accounting().devices[0].device_bytes, 0u);
}

TEST(ArenaResource, TensorsAboveTheThresholdGetTheirOwnSegment) {
  Fixture f;
  auto arena = ArenaResource::Create(f.raw, SmallArena()).value();
  Allocation big = arena->Allocate(2 * kMiB).value();
  EXPECT_EQ(arena->arena_stats().own_segment_tensors, 1u);
  EXPECT_EQ(arena->arena_stats().chunks, 0u);
  // The slack asked for to place it at the arena's alignment, exactly.
  EXPECT_EQ(arena->arena_stats().padding_bytes, SmallArena().alignment - f.raw->alignment());
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(big.ptr) % SmallArena().alignment, 0u);
  ASSERT_TRUE(arena->Deallocate(big).ok());
  EXPECT_EQ(f.sim->Accounting().devices[0].device_bytes, 0u);
}

TEST(ArenaResource, FallsBackToASmallerChunkWhenTheDeviceCannotGiveAWholeOne) {
  Fixture f;
  ArenaOptions o = SmallArena();
  o.chunk_bytes = 1ull << 30;  // the 64 MiB device cannot give 1 GiB
  auto arena = ArenaResource::Create(f.raw, o).value();
  absl::StatusOr<Allocation> a = arena->Allocate(1000);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_LE(arena->stats().reserved_bytes.current, static_cast<std::int64_t>(64 * kMiB));
  ASSERT_TRUE(arena->Deallocate(*a).ok());
}

TEST(ArenaResource, EveryMetadataAllocationFailureChangesNothingAndLeaksNothing) {
  // Each allocation the arena makes from its metadata resource fails in
  // turn: the call that meets it fails with ResourceExhausted, and the arena
  // and the device are as before (no chunk or segment left obtained).
  std::uint64_t k = 1;
  for (;; ++k) {
    Fixture f;
    harness::FailingMemoryResource metadata;
    {
      ArenaOptions o = SmallArena();
      o.metadata_resource = &metadata;
      auto arena = ArenaResource::Create(f.raw, o).value();
      metadata.FailAt(k);
      std::vector<Allocation> live;
      for (std::size_t bytes : {std::size_t{1000}, std::size_t{5000}, 2 * kMiB, std::size_t{100}}) {
        SCOPED_TRACE(testing::Message() << bytes << " bytes, failure at allocation " << k);
        const MemoryStats before = arena->stats();
        const ArenaStats arena_before = arena->arena_stats();
        const std::size_t device_before = f.sim->Accounting().devices[0].device_bytes;
        const std::uint64_t failed_before = metadata.failures();
        absl::StatusOr<Allocation> a = arena->Allocate(bytes);
        if (!a.ok()) {
          EXPECT_EQ(metadata.failures(), failed_before + 1) << a.status();
          EXPECT_EQ(a.status().code(), absl::StatusCode::kResourceExhausted) << a.status();
          EXPECT_EQ(arena->stats().reserved_bytes.current, before.reserved_bytes.current);
          EXPECT_EQ(arena->stats().allocated_bytes.current, before.allocated_bytes.current);
          EXPECT_EQ(arena->arena_stats().chunks, arena_before.chunks);
          EXPECT_EQ(arena->arena_stats().packed_tensors, arena_before.packed_tensors);
          EXPECT_EQ(f.sim->Accounting().devices[0].device_bytes, device_before)
              << "device memory left obtained";
          a = arena->Allocate(bytes);  // the failure was one-shot
        }
        ASSERT_TRUE(a.ok()) << a.status();
        live.push_back(*a);
      }
      for (const Allocation& a : live) ASSERT_TRUE(arena->Deallocate(a).ok());
      EXPECT_EQ(arena->arena_stats().chunks, 0u);
    }
    EXPECT_EQ(metadata.outstanding_bytes(), 0u) << "metadata leaked at k=" << k;
    EXPECT_EQ(f.sim->Accounting().devices[0].device_bytes, 0u);
    ASSERT_FALSE(HasFailure()) << "first failure at k=" << k;
    if (metadata.failures() == 0) break;  // k is past the last allocation
  }
  EXPECT_GE(k, 6u) << "entries, chunk nodes and chunks must all have been failed";
}

TEST(ArenaResource, OverflowingSizesAndBadOptionsAreErrors) {
  Fixture f;
  auto arena = ArenaResource::Create(f.raw, SmallArena()).value();
  EXPECT_FALSE(arena->Allocate(~std::size_t{0} - 10).ok());
  ArenaOptions o = SmallArena();
  o.alignment = 3000;
  EXPECT_FALSE(ArenaResource::Create(f.raw, o).ok());
  o = SmallArena();
  o.pack_threshold = 16 * kMiB;  // larger than a chunk
  EXPECT_FALSE(ArenaResource::Create(f.raw, o).ok());
}

}  // namespace
}  // namespace gpualloc
