// DeviceReads: a read of device memory that is real device work on a stream,
// for harness workloads on a real GPU (the sim has kernels for this). Each
// read copies the memory (up to a bound) into scratch memory of that stream's
// own, so it is queued on the stream like a kernel's read; the last read of a
// stream can be copied back to judge what it saw.
//
// Thread-safe. Scratch grows as reads need it (up to the bound) and is freed,
// after its device is synchronised, when the object is destroyed.
#ifndef GPUALLOC_HARNESS_INVARIANTS_DEVICE_READS_H_
#define GPUALLOC_HARNESS_INVARIANTS_DEVICE_READS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "allocator/backend/backend.h"

namespace gpualloc::harness {

class DeviceReads {
 public:
  // Reads copy at most `max_bytes` (the first bytes of the range).
  DeviceReads(Backend& device, std::size_t max_bytes) : device_(device), max_bytes_(max_bytes) {}
  DeviceReads(const DeviceReads&) = delete;
  DeviceReads& operator=(const DeviceReads&) = delete;
  ~DeviceReads();

  // Enqueues on `stream` a read of [p, p + bytes) (its first max_bytes).
  absl::Status Read(Stream stream, const void* p, std::size_t bytes);
  // What the last Read on `stream` copied, once the device is synchronised.
  absl::StatusOr<std::vector<unsigned char>> LastRead(Stream stream);

 private:
  struct Scratch {
    void* ptr = nullptr;
    std::size_t bytes = 0;
    std::size_t last_read = 0;
  };
  Backend& device_;
  const std::size_t max_bytes_;
  std::mutex mu_;
  std::map<std::pair<DeviceIndex, std::uintptr_t>, Scratch> scratch_;  // guarded by mu_
};

}  // namespace gpualloc::harness

#endif  // GPUALLOC_HARNESS_INVARIANTS_DEVICE_READS_H_
