// Pinned host memory, transfers and the staging pipeline over the real
// runtime: the data must arrive byte for byte, and pinned blocks must not be
// handed out again while a copy queued on a stream still reads them.
#include <algorithm>
#include <cstring>
#include <memory>
#include <numeric>
#include <vector>

#include "allocator/buffer/device_buffer.h"
#include "allocator/caching/caching_allocator.h"
#include "allocator/host/pinned_host_allocator.h"
#include "allocator/transfer/staging_pipeline.h"
#include "allocator/transfer/transfers.h"
#include "gtest/gtest.h"
#include "harness/gpu/require_device.h"

namespace gpualloc {
namespace {

class DeviceMemory : public ::testing::Test {
 protected:
  void SetUp() override {
    backend_ = harness::MakeRealBackend(GPUALLOC_TEST_RUNTIME);
    cache_ = CachingAllocator::Create(backend_, 0, CachingOptions{}).value();
    stream_ = backend_->CreateStream(0).value();
  }
  void TearDown() override {
    EXPECT_TRUE(backend_->SynchronizeStream(stream_).ok());
    EXPECT_TRUE(backend_->DestroyStream(stream_).ok());
    EXPECT_EQ(cache_->stats().allocated_bytes.current, 0);
    EXPECT_TRUE(cache_->EmptyCache().ok());
  }
  std::shared_ptr<Backend> backend_;
  std::shared_ptr<CachingAllocator> cache_;
  Stream stream_;
};

TEST_F(DeviceMemory, TransfersRoundTripByteForByte) {
  constexpr std::size_t kBytes = 8 << 20;
  absl::StatusOr<DeviceBuffer> a = DeviceBuffer::Create(cache_, kBytes, stream_);
  absl::StatusOr<DeviceBuffer> b = DeviceBuffer::Create(cache_, kBytes, stream_);
  ASSERT_TRUE(a.ok() && b.ok());
  std::vector<unsigned char> in(kBytes), out(kBytes, 0);
  std::iota(in.begin(), in.end(), 7);
  Transfers t(backend_);
  ASSERT_TRUE(t.ToDeviceSync(Span(*a), 0, in.data(), kBytes, stream_).ok());
  absl::StatusOr<Completion> copied = t.DeviceToDevice(Span(*b), 0, Span(*a), 0, kBytes, stream_);
  ASSERT_TRUE(copied.ok()) << copied.status();
  absl::StatusOr<Completion> filled = t.Fill(Span(*a), 0, 0xAB, kBytes, stream_);
  ASSERT_TRUE(filled.ok()) << filled.status();
  ASSERT_TRUE(t.ToHostSync(out.data(), Span(*b), 0, kBytes, stream_).ok());
  EXPECT_EQ(in, out) << "the device-to-device copy ran after the fill, or data was lost";
  ASSERT_TRUE(t.ToHostSync(out.data(), Span(*a), 0, kBytes, stream_).ok());
  EXPECT_TRUE(std::all_of(out.begin(), out.end(), [](unsigned char c) { return c == 0xAB; }));
  EXPECT_EQ(t.ToDevice(Span(*a), 1, in.data(), kBytes, stream_).status().code(),
            absl::StatusCode::kInvalidArgument) << "a copy past the end";
}

TEST_F(DeviceMemory, PinnedBlocksAreNotReusedWhileACopyStillReadsThem) {
  auto pinned = std::make_shared<PinnedHostAllocator>(backend_);
  absl::StatusOr<DeviceBuffer> dst = DeviceBuffer::Create(cache_, 64 << 20, stream_);
  ASSERT_TRUE(dst.ok());
  constexpr std::size_t kBlock = 1 << 20;
  // Many rounds: fill a pinned block, copy it to the device asynchronously,
  // give it back at once; the next block handed out must not be one a queued
  // copy still reads (the allocator waits for the recorded stream).
  for (int round = 0; round < 64; ++round) {
    absl::StatusOr<PinnedBlock> block = pinned->Allocate(kBlock, 0);
    ASSERT_TRUE(block.ok()) << block.status();
    std::memset(block->ptr, round, kBlock);
    ASSERT_TRUE(backend_->MemcpyAsync(static_cast<char*>(dst->data()) + round * kBlock, block->ptr,
                                      kBlock, CopyKind::kHostToDevice, stream_).ok());
    ASSERT_TRUE(pinned->RecordStream(*block, stream_).ok());
    ASSERT_TRUE(pinned->Deallocate(*block).ok());
  }
  EXPECT_EQ(pinned->stats().live_bytes, 0u);
  std::vector<unsigned char> back(64 * kBlock);
  ASSERT_TRUE(backend_->SynchronizeStream(stream_).ok());
  ASSERT_TRUE(backend_->Memcpy(back.data(), dst->data(), back.size(), CopyKind::kDeviceToHost).ok());
  for (int round = 0; round < 64; ++round) {
    const unsigned char* chunk = back.data() + round * kBlock;
    ASSERT_TRUE(std::all_of(chunk, chunk + kBlock, [round](unsigned char c) { return c == round; }))
        << "round " << round << ": a later round's fill reached an earlier copy";
  }
  EXPECT_TRUE(pinned->Flush(/*release_cache=*/true).ok());
}

TEST_F(DeviceMemory, StagingPipelineDeliversEveryBatch) {
  auto pinned = std::make_shared<PinnedHostAllocator>(backend_);
  absl::StatusOr<std::unique_ptr<StagingPipeline>> pipeline =
      StagingPipeline::Create(backend_, pinned, 0, 4 << 20);
  ASSERT_TRUE(pipeline.ok()) << pipeline.status();
  constexpr int kBatches = 12;
  constexpr std::size_t kBytes = 4 << 20;
  std::vector<DeviceBuffer> sources;
  std::vector<std::vector<unsigned char>> outputs(kBatches, std::vector<unsigned char>(kBytes));
  Transfers t(backend_);
  for (int i = 0; i < kBatches; ++i) {
    absl::StatusOr<DeviceBuffer> src = DeviceBuffer::Create(cache_, kBytes, stream_);
    ASSERT_TRUE(src.ok());
    ASSERT_TRUE(t.Fill(Span(*src), 0, 0x10 + i, kBytes, stream_).ok());
    ASSERT_TRUE((*pipeline)->Submit(Span(*src), stream_, outputs[i].data()).ok());
    sources.push_back(std::move(*src));
  }
  ASSERT_TRUE((*pipeline)->Finish().ok());
  for (int i = 0; i < kBatches; ++i) {
    EXPECT_TRUE(std::all_of(outputs[i].begin(), outputs[i].end(),
                            [i](unsigned char c) { return c == 0x10 + i; }))
        << "batch " << i;
  }
  pipeline->reset();
  EXPECT_EQ(pinned->stats().live_bytes, 0u) << "the pipeline left staging blocks live";
  EXPECT_EQ(pinned->stats().host_waits, 0u) << "a staging block's free could not be ordered";
  sources.clear();
  EXPECT_TRUE(pinned->Flush(/*release_cache=*/true).ok());
}

}  // namespace
}  // namespace gpualloc
