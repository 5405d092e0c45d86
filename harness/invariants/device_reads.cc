#include "harness/invariants/device_reads.h"

#include <algorithm>

#include "allocator/common/status_macros.h"

namespace gpualloc::harness {

DeviceReads::~DeviceReads() {
  for (auto& [where, scratch] : scratch_) {
    (void)device_.DeviceSynchronize(where.first);  // reads still queued into it
    device_.Free(where.first, scratch.ptr).IgnoreError();
  }
}

absl::Status DeviceReads::Read(Stream stream, const void* p, std::size_t bytes) {
  const std::size_t n = std::min(bytes, max_bytes_);
  if (n == 0) return absl::OkStatus();
  std::lock_guard<std::mutex> lock(mu_);
  Scratch& scratch = scratch_[{stream.device, stream.handle}];
  if (scratch.bytes < n) {
    if (scratch.ptr != nullptr) {
      GPUALLOC_RETURN_IF_ERROR(device_.SynchronizeStream(stream));  // its reads are done
      GPUALLOC_RETURN_IF_ERROR(device_.Free(stream.device, scratch.ptr));
      scratch = {};
    }
    absl::StatusOr<void*> grown = device_.Malloc(stream.device, n);
    GPUALLOC_RETURN_IF_ERROR(grown.status());
    scratch = {*grown, n, 0};
  }
  scratch.last_read = n;
  return device_.MemcpyAsync(scratch.ptr, p, n, CopyKind::kDeviceToDevice, stream);
}

absl::StatusOr<std::vector<unsigned char>> DeviceReads::LastRead(Stream stream) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = scratch_.find({stream.device, stream.handle});
  if (it == scratch_.end()) return std::vector<unsigned char>{};
  GPUALLOC_RETURN_IF_ERROR(device_.DeviceSynchronize(stream.device));
  std::vector<unsigned char> seen(it->second.last_read);
  GPUALLOC_RETURN_IF_ERROR(
      device_.Memcpy(seen.data(), it->second.ptr, seen.size(), CopyKind::kDeviceToHost));
  return seen;
}

}  // namespace gpualloc::harness
