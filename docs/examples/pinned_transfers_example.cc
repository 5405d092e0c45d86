// Compiled and run as a test; the [guide] region appears verbatim in
// docs/user-guide.md.
#include <memory>
#include <vector>

#include "allocator/backend/sim/sim_backend.h"
#include "allocator/buffer/host_buffers.h"
#include "allocator/caching/caching_allocator.h"
#include "allocator/host/pinned_host_allocator.h"
#include "allocator/transfer/transfers.h"
#include "gtest/gtest.h"

namespace {

TEST(GuideExample, PinnedMemoryAndTransfers) {
  using namespace gpualloc;
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(2, 256 << 20));
  std::shared_ptr<CachingAllocator> cache = CachingAllocator::Create(sim, 0, {}).value();
  Stream stream = sim->CreateStream(0).value();
  // [guide]
  // Page-locked host memory, cached, freeable from any thread whatever
  // device is current there.
  auto pinned = std::make_shared<PinnedHostAllocator>(sim);
  PinnedBuffer host = PinnedBuffer::Create(pinned, 1 << 20, /*owner=*/0).value();

  // Asynchronous copies return a completion: wait on it, poll it, or make
  // another stream wait for it on the device. Nothing synchronises behind
  // your back.
  Transfers transfers(sim);
  DeviceBuffer input = DeviceBuffer::Create(cache, 1 << 20, stream).value();
  Completion uploaded =
      transfers.ToDevice(Span(input), 0, host.data(), 1 << 20, stream).value();
  Completion cleared = transfers.Fill(Span(input), 0, 0, 4096, stream).value();
  if (absl::Status st = cleared.Wait(); !st.ok()) FAIL() << st;

  // Out of bounds, freed buffers, the wrong device: errors, never corruption.
  EXPECT_FALSE(transfers.ToHost(host.data(), Span(input), 1 << 20, 1, stream).ok());

  // The upload may still be reading `host`: tell the pinned allocator, so
  // the buffer's memory is not handed out again before the copy is done,
  // even if `host` is released right now.
  if (absl::Status st = host.RecordStream(stream); !st.ok()) FAIL() << st;
  // Host writes through the buffer are bounds-checked and seen by the sim's
  // stream-order checker: rewriting `host` before the upload is known done
  // would be reported. Here the upload is waited for first.
  if (absl::Status st = uploaded.Wait(); !st.ok()) FAIL() << st;
  std::vector<char> next_batch(4096, 7);
  if (absl::Status st = host.HostWrite(0, next_batch.data(), 4096); !st.ok()) FAIL() << st;
  EXPECT_TRUE(sim->CheckStreamOrder().ok());
  // [/guide]
  EXPECT_TRUE(uploaded.Done().value());
  input.Reset().IgnoreError();
  ASSERT_TRUE(sim->DestroyStream(stream).ok());
}

}  // namespace
