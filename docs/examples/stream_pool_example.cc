// Compiled and run as a test; the [guide] region appears verbatim in
// docs/user-guide.md.
#include <memory>

#include "allocator/backend/sim/sim_backend.h"
#include "allocator/caching/caching_allocator.h"
#include "allocator/streams/stream_pool.h"
#include "gtest/gtest.h"

namespace {

TEST(GuideExample, StreamPool) {
  using namespace gpualloc;
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(1, 256 << 20));
  std::shared_ptr<CachingAllocator> cache = CachingAllocator::Create(sim, 0, {}).value();
  // [guide]
  // Non-blocking streams per device, handed out in turn (32 per priority by
  // default, as PyTorch's pool), each created on its first turn. Three
  // streams, as gpu-memory-consolidation's MultiStreamManager keeps:
  StreamPoolOptions options;
  options.streams_per_priority = 3;
  std::unique_ptr<StreamPool> streams = StreamPool::Create(sim, options).value();
  Stream compute = streams->Next(/*device=*/0).value();
  Stream copy = streams->Next(0).value();
  Stream urgent = streams->Next(0, StreamPriority::kHigh).value();  // the device's highest
  EXPECT_EQ(sim->GetStreamPriority(urgent).value(), -5);

  // To the allocators they are ordinary streams: memory freed on one is
  // reused on another only after the first one's work.
  Allocation a = cache->Allocate(1 << 20, compute).value();
  if (absl::Status st = cache->Deallocate(a, compute); !st.ok()) FAIL() << st;
  Allocation b = cache->Allocate(1 << 20, copy).value();
  if (absl::Status st = cache->Deallocate(b, copy); !st.ok()) FAIL() << st;
  // The pool destroys its streams with it, each after the work queued on it.
  // [/guide]
  EXPECT_NE(compute, copy);
  streams.reset();
  EXPECT_TRUE(sim->CheckStreamOrder().ok());
}

}  // namespace
