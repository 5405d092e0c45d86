#include "allocator/transfer/staging_pipeline.h"

#include <chrono>
#include <cstring>

#include "absl/strings/str_format.h"
#include "allocator/common/exception_boundary.h"
#include "allocator/common/status_macros.h"

namespace gpualloc {
namespace {
using Clock = std::chrono::steady_clock;
double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }
}  // namespace

absl::StatusOr<std::unique_ptr<StagingPipeline>> StagingPipeline::Create(
    std::shared_ptr<Backend> backend, std::shared_ptr<PinnedHostAllocator> pinned,
    DeviceIndex device, std::size_t max_batch_bytes) {
  GPUALLOC_ASSIGN_OR_RETURN(Stream copy, CallAtBoundary("stream create", [&] {
                              return backend->CreateStream(device);
                            }));
  auto p = std::unique_ptr<StagingPipeline>(new StagingPipeline(backend, copy));
  for (Slot& slot : p->slots_) {
    GPUALLOC_ASSIGN_OR_RETURN(slot.staging, PinnedBuffer::Create(pinned, max_batch_bytes, device));
  }
  return p;
}

StagingPipeline::~StagingPipeline() {
  Finish().IgnoreError();
  // The staging blocks go back while their copy stream still exists: the
  // pinned allocator orders their reuse after the copies recorded on it, and
  // cannot once the stream is gone.
  for (Slot& slot : slots_) slot.staging.Reset().IgnoreError();
  CallAtBoundary("stream destroy", [&] {
    return transfers_.backend()->DestroyStream(copy_stream_);
  }).IgnoreError();
}

absl::Status StagingPipeline::Collect(Slot& slot) {
  if (!slot.copy) return absl::OkStatus();
  const auto t0 = Clock::now();
  absl::Status st = slot.copy->Wait();
  const auto t1 = Clock::now();
  if (st.ok()) st = slot.staging.HostRead(0, slot.destination, slot.bytes);
  stats_.host_wait_s += Seconds(t1 - t0);
  stats_.host_copy_s += Seconds(Clock::now() - t1);
  slot.copy.reset();
  return st;
}

absl::Status StagingPipeline::Submit(DeviceSpan src, Stream producer, void* host_dst) {
  Slot& slot = slots_[next_];
  if (src.size > slot.staging.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "staging pipeline: a %d-byte batch is larger than the %d-byte staging buffers", src.size,
        slot.staging.size()));
  }
  if (host_dst == nullptr) return absl::InvalidArgumentError("staging pipeline: null destination");
  GPUALLOC_RETURN_IF_ERROR(Collect(slot));  // the slot's previous batch, if still there
  // The copy waits for the producer's work so far, on the device.
  GPUALLOC_ASSIGN_OR_RETURN(Completion produced, Completion::Record(transfers_.backend(), producer));
  GPUALLOC_RETURN_IF_ERROR(produced.Then(copy_stream_));
  DeviceSpan on_copy_stream = src;
  GPUALLOC_ASSIGN_OR_RETURN(Completion copied,
                            transfers_.ToHost(slot.staging.data(), on_copy_stream, 0, src.size,
                                              copy_stream_));
  // If the pipeline goes away with this copy in flight, the staging block is
  // not reused before the copy is done.
  GPUALLOC_RETURN_IF_ERROR(slot.staging.RecordStream(copy_stream_));
  slot.copy = copied;
  slot.destination = host_dst;
  slot.bytes = src.size;
  ++stats_.batches;
  next_ = 1 - next_;
  return absl::OkStatus();
}

absl::Status StagingPipeline::Finish() {
  // Oldest first.
  absl::Status first = Collect(slots_[next_]);
  absl::Status second = Collect(slots_[1 - next_]);
  return first.ok() ? second : first;
}

}  // namespace gpualloc
