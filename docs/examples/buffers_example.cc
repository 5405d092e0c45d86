// Compiled and run as a test; the region between the [guide] markers appears
// verbatim in docs/user-guide.md (checked by guide_examples_test).
#include <cstring>
#include <memory>

#include "allocator/backend/sim/sim_backend.h"
#include "allocator/buffer/allocation_scope.h"
#include "allocator/buffer/device_buffer.h"
#include "allocator/buffer/shared_memory.h"
#include "allocator/buffer/typed_buffer.h"
#include "allocator/caching/caching_allocator.h"
#include "gtest/gtest.h"

namespace {

TEST(GuideExample, Buffers) {
  using namespace gpualloc;
  // [guide]
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(1, 256 << 20));
  std::shared_ptr<CachingAllocator> cache = CachingAllocator::Create(sim, 0, {}).value();
  const Stream stream = Stream::Default(0);

  // One owner; freed in the stream's order when it goes out of scope.
  absl::StatusOr<DeviceBuffer> weights = DeviceBuffer::Create(cache, 64 << 20, stream);
  if (!weights.ok()) FAIL() << weights.status();

  // Shared ownership; views keep the whole allocation alive, and a view
  // whose offset + size would wrap is an error, not a pointer.
  SharedMemory kv = SharedMemory::Allocate(cache, 1 << 20, stream).value();
  SharedMemory first_half = kv.View(0, 512 << 10).value();
  EXPECT_FALSE(kv.View(~std::size_t{0} - 8, 16).ok());

  // Element counts, with the byte size computed without overflow.
  TypedBuffer<float> logits = TypedBuffer<float>::Create(cache, 32000, stream).value();

  // Everything a step allocates, released together — even on an exception.
  {
    AllocationScope step(cache, stream);
    float* activations = step.AllocateArray<float>(1 << 20).value();
    (void)activations;
  }
  // [/guide]
  EXPECT_EQ(logits.size_bytes(), 128000u);
  EXPECT_EQ(first_half.size(), 512u << 10);
}

}  // namespace
