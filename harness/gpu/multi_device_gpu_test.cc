// Several devices in one process: work on device d while device e is
// current, copies between peers, and the caller's current device left as it
// was. Below two devices the cases that need two skip, saying so.
#include <thread>
#include <vector>

#include "allocator/caching/caching_allocator.h"
#include "gtest/gtest.h"
#include "harness/gpu/require_device.h"

namespace gpualloc {
namespace {

std::shared_ptr<Backend> Real() { return harness::MakeRealBackend(GPUALLOC_TEST_RUNTIME); }

TEST(MultiDevice, BackendCallsLeaveTheCallersCurrentDeviceAlone) {
  std::shared_ptr<Backend> backend = Real();
  const int devices = backend->DeviceCount().value();
  for (int current = 0; current < devices; ++current) {
    ASSERT_TRUE(backend->SetDevice(current).ok());
    for (int d = 0; d < devices; ++d) {
      absl::StatusOr<void*> p = backend->Malloc(d, 1 << 20);
      ASSERT_TRUE(p.ok()) << p.status();
      ASSERT_TRUE(backend->Memset(*p, 1, 1 << 20).ok());
      ASSERT_TRUE(backend->Free(d, *p).ok());
      EXPECT_EQ(backend->GetDevice().value(), current) << "a call on device " << d;
    }
  }
}

TEST(MultiDevice, ACallOnAFreshThreadLeavesItsCurrentDeviceAsItWas) {
  std::shared_ptr<Backend> backend = Real();
  const int devices = backend->DeviceCount().value();
  const int target = devices - 1;
  DeviceIndex before = -1, after = -1;
  absl::Status status;
  std::thread([&] {
    before = backend->GetDevice().value_or(-1);
    absl::StatusOr<void*> p = backend->Malloc(target, 4096);
    status = p.status();
    if (p.ok()) status = backend->Free(target, *p);
    after = backend->GetDevice().value_or(-1);
  }).join();
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(before, after);
}

TEST(MultiDevice, WorkOnOneDeviceWhileAnotherIsCurrent) {
  std::shared_ptr<Backend> backend = Real();
  if (backend->DeviceCount().value() < 2) GTEST_SKIP() << "needs two devices; this machine has one";
  ASSERT_TRUE(backend->SetDevice(1).ok());
  std::shared_ptr<CachingAllocator> cache = CachingAllocator::Create(backend, 0, {}).value();
  const Stream s = backend->CreateStream(0).value();
  absl::StatusOr<Allocation> a = cache->Allocate(4 << 20, s);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(backend->MemsetAsync(a->ptr, 7, a->bytes, s).ok());
  std::vector<unsigned char> back(a->bytes);
  ASSERT_TRUE(backend->SynchronizeStream(s).ok());
  ASSERT_TRUE(backend->Memcpy(back.data(), a->ptr, back.size(), CopyKind::kDeviceToHost).ok());
  EXPECT_EQ(back.front(), 7);
  EXPECT_EQ(back.back(), 7);
  ASSERT_TRUE(cache->Deallocate(*a, s).ok());
  ASSERT_TRUE(backend->DestroyStream(s).ok());
  EXPECT_EQ(backend->GetDevice().value(), 1) << "the allocator switched the caller's device";
  EXPECT_TRUE(cache->EmptyCache().ok());
}

TEST(MultiDevice, PeerCopiesArriveIntact) {
  std::shared_ptr<Backend> backend = Real();
  if (backend->DeviceCount().value() < 2) GTEST_SKIP() << "needs two devices; this machine has one";
  absl::StatusOr<void*> on0 = backend->Malloc(0, 1 << 20);
  absl::StatusOr<void*> on1 = backend->Malloc(1, 1 << 20);
  ASSERT_TRUE(on0.ok() && on1.ok());
  ASSERT_TRUE(backend->Memset(*on0, 0x5A, 1 << 20).ok());
  ASSERT_TRUE(backend->Memcpy(*on1, *on0, 1 << 20, CopyKind::kDeviceToDevice).ok());
  std::vector<unsigned char> back(1 << 20);
  ASSERT_TRUE(backend->Memcpy(back.data(), *on1, back.size(), CopyKind::kDeviceToHost).ok());
  EXPECT_EQ(back[12345], 0x5A);
  EXPECT_TRUE(backend->Free(0, *on0).ok());
  EXPECT_TRUE(backend->Free(1, *on1).ok());
}

}  // namespace
}  // namespace gpualloc
