// EventPool: the events of one device, created once and reused, for code that
// records an event per operation (a buffer returned to a pool, a buffer handed
// to another stream). Reuse saves a create and a destroy per operation, and
// an event is destroyed only with the pool: a destroy that fails (a lost
// device) is reported then, and nothing is destroyed while the device may
// still be recording into it.
//
// An acquired event is the caller's until Recycle; recycle it once nothing
// will wait on it or query it again (an event recorded and waited for, or
// one whose record failed). Thread-safe.
#ifndef GPUALLOC_ALLOCATOR_TRANSFER_EVENT_POOL_H_
#define GPUALLOC_ALLOCATOR_TRANSFER_EVENT_POOL_H_

#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "allocator/backend/backend.h"
#include "allocator/common/mutex.h"

namespace gpualloc {

class EventPool {
 public:
  EventPool(std::shared_ptr<Backend> backend, DeviceIndex device)
      : backend_(std::move(backend)), device_(device) {}
  // Destroys every spare event; a failure is reported on stderr.
  ~EventPool();
  EventPool(const EventPool&) = delete;
  EventPool& operator=(const EventPool&) = delete;

  // A spare event, or a new one (the backend's error if it cannot make one).
  absl::StatusOr<Event> Acquire() ABSL_LOCKS_EXCLUDED(mu_);
  // Keeps `event` for reuse. Never throws (if it cannot be kept, it is
  // destroyed).
  void Recycle(Event event) noexcept ABSL_LOCKS_EXCLUDED(mu_);
  // Makes `to` wait on the device for the work queued on `from` so far: an
  // event recorded on `from`, waited for by `to`, recycled.
  absl::Status Order(Stream from, Stream to) ABSL_LOCKS_EXCLUDED(mu_);

  Backend& backend() const { return *backend_; }
  std::size_t spares() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  const std::shared_ptr<Backend> backend_;
  const DeviceIndex device_;
  mutable Mutex mu_;
  std::vector<Event> spares_ ABSL_GUARDED_BY(mu_);
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_TRANSFER_EVENT_POOL_H_
