#include "allocator/backend/testing/backend_contract.h"

#include <atomic>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace gpualloc {

void BackendContract::SetUp() {
  backend_ = GetParam().make();
  absl::StatusOr<int> count = backend_->DeviceCount();
  if (!count.ok() || *count == 0) {
    GTEST_SKIP() << GetParam().name << " has no device here: " << count.status();
  }
}

namespace {

TEST_P(BackendContract, MallocIsAlignedAndFreeable) {
  auto props = backend_->GetDeviceProperties(0);
  ASSERT_TRUE(props.ok()) << props.status();
  for (std::size_t bytes : {1u, 255u, 256u, 4097u, 1u << 20}) {
    auto p = backend_->Malloc(0, bytes);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(*p) % props->alignment, 0u);
    EXPECT_TRUE(backend_->Free(0, *p).ok());
  }
}

TEST_P(BackendContract, DataRoundTripsThroughDeviceMemory) {
  constexpr std::size_t kBytes = 64 * 1024;
  std::vector<unsigned char> in(kBytes), out(kBytes, 0);
  for (std::size_t i = 0; i < kBytes; ++i) in[i] = static_cast<unsigned char>(i * 7 + 3);
  auto a = backend_->Malloc(0, kBytes);
  auto b = backend_->Malloc(0, kBytes);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(backend_->Memcpy(*a, in.data(), kBytes, CopyKind::kHostToDevice).ok());
  ASSERT_TRUE(backend_->Memcpy(*b, *a, kBytes, CopyKind::kDeviceToDevice).ok());
  ASSERT_TRUE(backend_->Memcpy(out.data(), *b, kBytes, CopyKind::kDeviceToHost).ok());
  EXPECT_EQ(in, out);
  ASSERT_TRUE(backend_->Memset(*a, 0x5A, kBytes).ok());
  ASSERT_TRUE(backend_->Memcpy(out.data(), *a, kBytes, CopyKind::kDeviceToHost).ok());
  EXPECT_EQ(out, std::vector<unsigned char>(kBytes, 0x5A));
  EXPECT_TRUE(backend_->Free(0, *a).ok());
  EXPECT_TRUE(backend_->Free(0, *b).ok());
}

TEST_P(BackendContract, AsyncCopiesRunInStreamOrderAndEventsTrackThem) {
  constexpr std::size_t kBytes = 1 << 20;
  auto stream = backend_->CreateStream(0);
  ASSERT_TRUE(stream.ok()) << stream.status();
  auto event = backend_->CreateEvent(0);
  ASSERT_TRUE(event.ok()) << event.status();
  auto host = backend_->HostAlloc(0, kBytes);
  auto dev = backend_->Malloc(0, kBytes);
  ASSERT_TRUE(host.ok() && dev.ok());
  std::memset(*host, 0x11, kBytes);
  ASSERT_TRUE(backend_->MemcpyAsync(*dev, *host, kBytes, CopyKind::kHostToDevice, *stream).ok());
  ASSERT_TRUE(backend_->MemsetAsync(*dev, 0x22, kBytes / 2, *stream).ok());
  ASSERT_TRUE(backend_->MemcpyAsync(*host, *dev, kBytes, CopyKind::kDeviceToHost, *stream).ok());
  ASSERT_TRUE(backend_->RecordEvent(*event, *stream).ok());
  ASSERT_TRUE(backend_->SynchronizeEvent(*event).ok());
  auto done = backend_->QueryEvent(*event);
  ASSERT_TRUE(done.ok());
  EXPECT_TRUE(*done);
  auto* bytes = static_cast<unsigned char*>(*host);
  EXPECT_EQ(bytes[0], 0x22);
  EXPECT_EQ(bytes[kBytes / 2 - 1], 0x22);
  EXPECT_EQ(bytes[kBytes / 2], 0x11);
  EXPECT_EQ(bytes[kBytes - 1], 0x11);
  EXPECT_TRUE(backend_->Free(0, *dev).ok());
  EXPECT_TRUE(backend_->HostFree(0, *host).ok());
  EXPECT_TRUE(backend_->DestroyEvent(*event).ok());
  EXPECT_TRUE(backend_->DestroyStream(*stream).ok());
}

// A host function is either run in stream order or refused: a backend that
// said yes and never ran it would leave a caller (the GPU tests' stream
// gates) waiting for nothing.
TEST_P(BackendContract, StreamsOfEveryPriorityInTheRangeWorkAndReportTheirPriority) {
  auto props = backend_->GetDeviceProperties(0);
  ASSERT_TRUE(props.ok()) << props.status();
  const int least = props->stream_priority_least;
  const int greatest = props->stream_priority_greatest;
  EXPECT_LE(greatest, least) << "lower numbers are higher priorities";
  for (int priority : {least, greatest, (least + greatest) / 2}) {
    auto stream = backend_->CreateStreamWithPriority(0, priority);
    ASSERT_TRUE(stream.ok()) << stream.status();
    EXPECT_EQ(backend_->GetStreamPriority(*stream).value_or(-1000), priority);
    auto dev = backend_->Malloc(0, 4096);
    ASSERT_TRUE(dev.ok());
    EXPECT_TRUE(backend_->MemsetAsync(*dev, 1, 4096, *stream).ok());
    EXPECT_TRUE(backend_->SynchronizeStream(*stream).ok());
    EXPECT_TRUE(backend_->Free(0, *dev).ok());
    EXPECT_TRUE(backend_->DestroyStream(*stream).ok());
  }
  // Beyond the range: clamped, as the runtimes do.
  auto beyond = backend_->CreateStreamWithPriority(0, greatest - 100);
  ASSERT_TRUE(beyond.ok()) << beyond.status();
  EXPECT_EQ(backend_->GetStreamPriority(*beyond).value_or(-1000), greatest);
  EXPECT_TRUE(backend_->DestroyStream(*beyond).ok());
  EXPECT_EQ(backend_->GetStreamPriority(Stream::Default(0)).value_or(-1000), 0);
}

TEST_P(BackendContract, PeerCopiesAndPeerAccessWhereTheDevicesHaveThem) {
  EXPECT_FALSE(backend_->CanAccessPeer(0, 0).value_or(true)) << "a device is not its own peer";
  EXPECT_FALSE(backend_->EnablePeerAccess(0, 0).ok());
  const int devices = backend_->DeviceCount().value_or(1);
  if (devices < 2) GTEST_SKIP() << "one device: no peers";
  constexpr std::size_t kBytes = 64 * 1024;
  std::vector<unsigned char> in(kBytes), out(kBytes, 0);
  for (std::size_t i = 0; i < kBytes; ++i) in[i] = static_cast<unsigned char>(i * 5 + 1);
  auto a = backend_->Malloc(0, kBytes);
  auto b = backend_->Malloc(1, kBytes);
  ASSERT_TRUE(a.ok() && b.ok());
  auto stream = backend_->CreateStream(1);
  ASSERT_TRUE(stream.ok()) << stream.status();
  ASSERT_TRUE(backend_->Memcpy(*a, in.data(), kBytes, CopyKind::kHostToDevice).ok());
  // A peer copy works with or without a link (the runtime stages it).
  absl::Status copied = backend_->MemcpyPeerAsync(*b, 1, *a, 0, kBytes, *stream);
  ASSERT_TRUE(copied.ok()) << copied;
  ASSERT_TRUE(backend_->SynchronizeStream(*stream).ok());
  ASSERT_TRUE(backend_->Memcpy(out.data(), *b, kBytes, CopyKind::kDeviceToHost).ok());
  EXPECT_EQ(in, out);
  absl::StatusOr<bool> can = backend_->CanAccessPeer(1, 0);
  ASSERT_TRUE(can.ok()) << can.status();
  absl::Status enabled = backend_->EnablePeerAccess(1, 0);
  if (*can) {
    EXPECT_TRUE(enabled.ok()) << enabled;
    EXPECT_TRUE(backend_->EnablePeerAccess(1, 0).ok()) << "enabling twice is no error";
  } else {
    EXPECT_FALSE(enabled.ok());
  }
  EXPECT_TRUE(backend_->DestroyStream(*stream).ok());
  EXPECT_TRUE(backend_->Free(0, *a).ok());
  EXPECT_TRUE(backend_->Free(1, *b).ok());
}

TEST_P(BackendContract, HostFunctionsRunInStreamOrderOrAreRefused) {
  absl::StatusOr<Stream> stream = backend_->CreateStream(0);
  ASSERT_TRUE(stream.ok()) << stream.status();
  std::atomic<int> ran{0};
  const absl::Status st = backend_->LaunchHostFunc(
      *stream, [](void* count) { static_cast<std::atomic<int>*>(count)->fetch_add(1); }, &ran);
  if (st.ok()) {
    ASSERT_TRUE(backend_->SynchronizeStream(*stream).ok());
    EXPECT_EQ(ran.load(), 1);
  } else {
    EXPECT_EQ(st.code(), absl::StatusCode::kUnimplemented) << st;
    EXPECT_NE(st.message().find("host functions"), absl::string_view::npos) << st;
    EXPECT_EQ(ran.load(), 0);
  }
  EXPECT_TRUE(backend_->DestroyStream(*stream).ok());
}

TEST_P(BackendContract, CurrentDeviceIsPerThread) {
  auto count = backend_->DeviceCount();
  ASSERT_TRUE(count.ok()) << count.status();
  if (*count < 2) {
    // With one device every thread's device is 0 whatever the runtime does:
    // the test could not fail, so it does not pretend to pass.
    GTEST_SKIP() << "needs two devices to tell per-thread from global state; this runtime has "
                 << *count;
  }
  const int last = *count - 1;
  ASSERT_TRUE(backend_->SetDevice(last).ok());
  DeviceIndex seen_by_other = -2;
  DeviceIndex other_after_its_switch = -2;
  std::thread([&] {
    auto d = backend_->GetDevice();
    seen_by_other = d.ok() ? *d : -3;
    // Its own switch, to a device this thread does not use, stays its own.
    if (backend_->SetDevice(last - 1).ok()) {
      auto after = backend_->GetDevice();
      other_after_its_switch = after.ok() ? *after : -3;
    }
  }).join();
  EXPECT_EQ(seen_by_other, 0) << "a new thread starts on device 0, not this thread's device";
  EXPECT_EQ(other_after_its_switch, last - 1);
  EXPECT_EQ(backend_->GetDevice().value(), last) << "the other thread's switch leaked here";
  ASSERT_TRUE(backend_->SetDevice(0).ok());
}

TEST_P(BackendContract, BadArgumentsAreErrorsNotCrashes) {
  auto count = backend_->DeviceCount();
  EXPECT_FALSE(backend_->Malloc(*count, 256).ok()) << "device index past the end";
  EXPECT_FALSE(backend_->Malloc(-5, 256).ok());
  EXPECT_FALSE(backend_->SetDevice(*count).ok());
  EXPECT_FALSE(backend_->Malloc(0, ~std::size_t{0}).ok()) << "absurd size";
  EXPECT_FALSE(backend_->DestroyStream(Stream::Default(0)).ok());
  EXPECT_TRUE(backend_->Free(0, nullptr).ok()) << "freeing null is a no-op, as in CUDA";
}

TEST_P(BackendContract, StreamOrderedAllocationWhereSupported) {
  auto props = backend_->GetDeviceProperties(0);
  if (!props->supports_stream_ordered_alloc) GTEST_SKIP() << "no stream-ordered allocation";
  auto stream = backend_->CreateStream(0);
  ASSERT_TRUE(stream.ok());
  auto p = backend_->MallocAsync(4096, *stream);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(backend_->MemsetAsync(*p, 1, 4096, *stream).ok());
  EXPECT_TRUE(backend_->FreeAsync(*p, *stream).ok());
  EXPECT_TRUE(backend_->SynchronizeStream(*stream).ok());
  EXPECT_TRUE(backend_->DestroyStream(*stream).ok());
}

TEST_P(BackendContract, VirtualMemoryMapsChunksIntoAReservation) {
  auto props = backend_->GetDeviceProperties(0);
  if (!props->supports_virtual_memory) GTEST_SKIP() << "no virtual-memory API";
  const std::size_t g = props->vm_granularity;
  auto va = backend_->VmReserve(0, 4 * g);
  ASSERT_TRUE(va.ok()) << va.status();
  auto c1 = backend_->VmCreate(0, g);
  auto c2 = backend_->VmCreate(0, g);
  ASSERT_TRUE(c1.ok() && c2.ok());
  ASSERT_TRUE(backend_->VmMap(*va, *c1).ok());
  ASSERT_TRUE(backend_->VmMap(*va + g, *c2).ok());
  ASSERT_TRUE(backend_->VmSetAccess(*va, 2 * g, 0).ok());
  // A copy spanning both chunks works: the range is contiguous device memory.
  std::vector<unsigned char> in(2 * g, 0x7E), out(2 * g, 0);
  void* base = reinterpret_cast<void*>(*va);
  ASSERT_TRUE(backend_->Memcpy(base, in.data(), in.size(), CopyKind::kHostToDevice).ok());
  ASSERT_TRUE(backend_->Memcpy(out.data(), base, out.size(), CopyKind::kDeviceToHost).ok());
  EXPECT_EQ(in, out);
  EXPECT_TRUE(backend_->VmUnmap(*va, 2 * g).ok());
  EXPECT_TRUE(backend_->VmReleasePhysical(*c1).ok());
  EXPECT_TRUE(backend_->VmReleasePhysical(*c2).ok());
  EXPECT_TRUE(backend_->VmRelease(*va, 4 * g).ok());
}

}  // namespace
}  // namespace gpualloc
