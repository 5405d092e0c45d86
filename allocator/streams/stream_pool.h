// StreamPool: per device, non-blocking streams handed out round-robin, one
// pool for each priority, each stream created the first time its turn comes.
// PyTorch's stream pool is the model (32 streams per priority per device);
// gpu-memory-consolidation's MultiStreamManager (3 streams) is one small
// configuration of it.
//
//   auto pool = StreamPool::Create(backend).value();
//   Stream copy = pool->Next(/*device=*/0).value();
//   Stream urgent = pool->Next(0, StreamPriority::kHigh).value();
//   auto buf = cache->Allocate(bytes, copy);  // an ordinary stream to the allocators
//
// Contract:
//  - Next(device, priority) returns the pool's streams of that device and
//    priority in turn, `streams_per_priority` of them, then the first again:
//    a stream is shared by every caller its turn comes to, as in PyTorch.
//  - kDefault streams have the device's default priority
//    (stream_priority_least), kHigh streams its highest
//    (stream_priority_greatest); on a device without priorities both are
//    default-priority streams, in separate pools.
//  - A stream that cannot be created is an error for that call only; its
//    turn comes round again and the creation is retried.
//  - The streams live as long as the pool. The destructor destroys them,
//    each after the work queued on it (Backend::DestroyStream waits first),
//    so a stream is never destroyed with work queued; a failure is reported
//    on stderr. Stop using the pool's streams before destroying it.
//  - InvalidArgument for a device the backend does not have; whatever the
//    backend throws becomes a Status.
// Thread-safe.
#ifndef GPUALLOC_ALLOCATOR_STREAMS_STREAM_POOL_H_
#define GPUALLOC_ALLOCATOR_STREAMS_STREAM_POOL_H_

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "allocator/backend/backend.h"
#include "allocator/common/mutex.h"

namespace gpualloc {

enum class StreamPriority { kDefault = 0, kHigh = 1 };
inline constexpr int kStreamPriorityCount = 2;

struct StreamPoolOptions {
  int streams_per_priority = 32;  // 1 to 1024

  absl::Status Validate() const;
};

struct StreamPoolStats {
  // Indexed by StreamPriority.
  std::array<std::uint64_t, kStreamPriorityCount> handed_out{};
  std::array<std::uint64_t, kStreamPriorityCount> created{};
  std::uint64_t failed_creations = 0;
};

class StreamPool {
 public:
  // Pools for every device of `backend`. InvalidArgument for a null backend
  // or bad options; the backend's error if it cannot count its devices.
  static absl::StatusOr<std::unique_ptr<StreamPool>> Create(std::shared_ptr<Backend> backend,
                                                            StreamPoolOptions options = {});
  ~StreamPool();
  StreamPool(const StreamPool&) = delete;
  StreamPool& operator=(const StreamPool&) = delete;

  absl::StatusOr<Stream> Next(DeviceIndex device,
                              StreamPriority priority = StreamPriority::kDefault)
      ABSL_LOCKS_EXCLUDED(mu_);
  int device_count() const { return devices_; }
  StreamPoolStats stats() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // One device's streams of one priority: slots filled as their turn comes.
  struct Ring {
    std::vector<Stream> slots;  // handle 0: not created yet
    std::size_t next = 0;
  };
  StreamPool(std::shared_ptr<Backend> backend, int devices, StreamPoolOptions options);
  absl::StatusOr<Stream> NextImpl(DeviceIndex device, StreamPriority priority);

  const std::shared_ptr<Backend> backend_;
  const StreamPoolOptions options_;
  const int devices_;
  mutable Mutex mu_;
  // [device][priority]; the vectors' sizes never change after construction.
  std::vector<std::array<Ring, kStreamPriorityCount>> pools_ ABSL_GUARDED_BY(mu_);
  StreamPoolStats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_STREAMS_STREAM_POOL_H_
