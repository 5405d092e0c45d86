// Compiled and run as a test; the [guide] region appears verbatim in
// docs/user-guide.md.
#include <cstdint>
#include <memory>
#include <vector>

#include "allocator/backend/sim/sim_backend.h"
#include "allocator/caching/caching_allocator.h"
#include "allocator/host/pinned_host_allocator.h"
#include "allocator/pools/keyed_buffer_cache.h"
#include "allocator/pools/staging_buffer_pool.h"
#include "gtest/gtest.h"

namespace {

TEST(GuideExample, StagingPoolAndKeyedBufferCache) {
  using namespace gpualloc;
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(1, 256 << 20));
  std::shared_ptr<CachingAllocator> cache = CachingAllocator::Create(sim, 0, {}).value();
  auto pinned = std::make_shared<PinnedHostAllocator>(sim);
  Stream stream = sim->CreateStream(0).value();
  DeviceBuffer results = DeviceBuffer::Create(cache, 64 << 10, stream).value();
  // [guide]
  // Readback through a bounded pool of pinned staging buffers (16 idle at
  // most by default). A buffer returned with its copy still running is not
  // handed out again before the copy is done.
  std::shared_ptr<StagingBufferPool> staging = StagingBufferPool::Create(pinned, 0).value();
  for (int step = 0; step < 10; ++step) {
    StagingBuffer buf = staging->Acquire(64 << 10).value();
    Completion copied = buf.ReadBack(Span(results), 0, 64 << 10, stream).value();
    if (absl::Status st = copied.Wait(); !st.ok()) FAIL() << st;
    std::vector<char> out(64 << 10);
    if (absl::Status st = buf.HostRead(0, out.data(), out.size()); !st.ok()) FAIL() << st;
  }  // each buffer goes back to the pool here
  EXPECT_EQ(staging->stats().hit_rate(), 0.9);  // one miss, then hits

  // Small device buffers kept by (element type, count, purpose), at most
  // four per key: an iterative algorithm gets the same buffer every step.
  enum class Reduction { kSum, kMax };
  std::shared_ptr<KeyedBufferCache> reductions = KeyedBufferCache::Create(cache, pinned).value();
  for (int iteration = 0; iteration < 10; ++iteration) {
    KeyedBuffer<float> sum = reductions->Acquire<float>(4, Reduction::kSum, stream).value();
    if (absl::Status st = sum.Zero(); !st.ok()) FAIL() << st;
    // ... a reduction kernel writes sum.data() on `stream` ...
    float total = sum.ReadResult(0).value();  // through pinned result slots
    EXPECT_EQ(total, 0.0f);
  }
  EXPECT_EQ(reductions->stats().hits, 9u);
  // [/guide]
  EXPECT_TRUE(sim->CheckStreamOrder().ok());
  ASSERT_TRUE(reductions->Trim().ok());
  results.Reset().IgnoreError();
  ASSERT_TRUE(sim->SynchronizeStream(stream).ok());
  ASSERT_TRUE(sim->DestroyStream(stream).ok());
}

}  // namespace
