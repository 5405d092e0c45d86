// StagingPipeline: streams device results to the host through two pinned
// staging buffers on a copy stream of its own, so the device-to-host copy of
// batch k runs while the producer stream computes batch k+1, and the host
// copies batch k-1 out of staging meanwhile.
//
//   producer: [compute k][compute k+1][compute k+2]
//   copy:            [D2H k -> slot A][D2H k+1 -> slot B][D2H k+2 -> A]
//   host:                        [A -> out k]        [B -> out k+1]
//
// Submit(k) orders the copy after the producer's work so far (an event, no
// host wait); it only blocks when both slots still hold batches not yet
// collected into their destinations. Finish() collects the rest. Stats say
// how long the host waited and how long it worked, so the overlap is
// measured, not assumed. The staging buffers are recorded on the copy
// stream and read through PinnedBuffer::HostRead, so the pinned allocator and
// the sim's stream-order checker both see their stream use. Not thread-safe:
// one producer thread.
#ifndef GPUALLOC_ALLOCATOR_TRANSFER_STAGING_PIPELINE_H_
#define GPUALLOC_ALLOCATOR_TRANSFER_STAGING_PIPELINE_H_

#include <array>
#include <memory>
#include <optional>

#include "allocator/buffer/host_buffers.h"
#include "allocator/transfer/transfers.h"

namespace gpualloc {

struct PipelineStats {
  std::uint64_t batches = 0;
  double host_wait_s = 0;   // blocked waiting for a copy to finish
  double host_copy_s = 0;   // copying out of staging
};

class StagingPipeline {
 public:
  static absl::StatusOr<std::unique_ptr<StagingPipeline>> Create(
      std::shared_ptr<Backend> backend, std::shared_ptr<PinnedHostAllocator> pinned,
      DeviceIndex device, std::size_t max_batch_bytes);
  ~StagingPipeline();

  // Queues a copy of `src` (produced on `producer`) into `host_dst`, which
  // must stay valid until Finish() or until two more batches are submitted.
  absl::Status Submit(DeviceSpan src, Stream producer, void* host_dst);
  // Waits for every submitted batch and copies it to its destination.
  absl::Status Finish();
  const PipelineStats& stats() const { return stats_; }

 private:
  struct Slot {
    PinnedBuffer staging;
    std::optional<Completion> copy;  // set while a batch is in flight
    void* destination = nullptr;
    std::size_t bytes = 0;
  };
  StagingPipeline(std::shared_ptr<Backend> backend, Stream copy_stream)
      : transfers_(std::move(backend)), copy_stream_(copy_stream) {}
  absl::Status Collect(Slot& slot);

  Transfers transfers_;
  Stream copy_stream_;
  std::array<Slot, 2> slots_;
  std::size_t next_ = 0;
  PipelineStats stats_;
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_TRANSFER_STAGING_PIPELINE_H_
