// MemoryResource: the one interface every allocator and adaptor implements,
// so they stack in any order (RMM's device_memory_resource, with Status
// instead of exceptions):
//
//   auto raw = std::make_shared<BackendResource>(backend, /*device=*/0);
//   auto cache = CachingAllocator::Create(backend, 0, {}).value();
//
// Non-virtual public entry points check what is common to every resource
// (zero size, null, wrong device) and catch anything an implementation or a
// backend throws, so no resource can leak an exception to the caller.
//
// Thread safety: every shipped resource is safe to use from many threads;
// each documents its locking.
#ifndef GPUALLOC_ALLOCATOR_RESOURCE_MEMORY_RESOURCE_H_
#define GPUALLOC_ALLOCATOR_RESOURCE_MEMORY_RESOURCE_H_

#include <cstddef>

#include "absl/base/attributes.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "allocator/backend/types.h"
#include "allocator/stats/memory_stats.h"

namespace gpualloc {

class AllocationRecorder;  // allocation_recorder.h

// A live allocation. `bytes` is what was requested; `stream` the stream it
// was allocated on (it may be used there immediately).
struct Allocation {
  void* ptr = nullptr;
  std::size_t bytes = 0;
  Stream stream;

  DeviceIndex device() const { return stream.device; }
  explicit operator bool() const { return ptr != nullptr; }
  friend bool operator==(const Allocation&, const Allocation&) = default;
};

class MemoryResource {
 public:
  virtual ~MemoryResource() = default;

  // Allocates `bytes` (> 0) usable on `stream` in stream order. Errors:
  // InvalidArgument (zero size, stream of another device), ResourceExhausted
  // (out of memory; the message says where the memory is), or the upstream's
  // error. On error nothing changed.
  absl::StatusOr<Allocation> Allocate(std::size_t bytes, Stream stream) noexcept;
  absl::StatusOr<Allocation> Allocate(std::size_t bytes) noexcept {
    return Allocate(bytes, Stream::Default(device()));
  }

  // Returns `allocation`, freed in the order of `stream` (work enqueued on
  // `stream` before the call may still use it). A pointer this resource did
  // not hand out, a second free, or a free on another device's stream is
  // InvalidArgument and changes nothing.
  absl::Status Deallocate(const Allocation& allocation, Stream stream) noexcept;
  absl::Status Deallocate(const Allocation& allocation) noexcept {
    return Deallocate(allocation, allocation.stream);
  }

  // Returns `allocation` when the caller has synchronised the device since
  // its last use on any stream (an adaptor trimming its cache): nothing needs
  // ordering, and no stream is named, so it is safe after the allocation's
  // stream was destroyed (Deallocate names it; a real runtime may crash on a
  // destroyed stream's handle). Same errors as Deallocate.
  absl::Status DeallocateAfterSync(const Allocation& allocation) noexcept;

  virtual absl::string_view name() const = 0;
  virtual DeviceIndex device() const = 0;
  // Every pointer handed out is a multiple of this.
  virtual std::size_t alignment() const = 0;
  // A consistent snapshot; cheap.
  virtual MemoryStats stats() const = 0;
  // Resources that record their live allocations themselves (see
  // allocation_recorder.h) return their recorder; others null.
  virtual AllocationRecorder* recorder() { return nullptr; }

 protected:
  // For an adaptor whose upstream serves the same device: runs the
  // upstream's implementation directly, from inside this resource's own
  // entry point, whose checks (size, device) and exception boundary already
  // cover the call. Saves the second pass through them on every operation.
  static absl::StatusOr<Allocation> AllocateFromUpstream(MemoryResource& upstream,
                                                         std::size_t bytes, Stream stream) {
    return upstream.DoAllocate(bytes, stream);
  }
  static absl::Status DeallocateToUpstream(MemoryResource& upstream,
                                           const Allocation& allocation, Stream stream) {
    return upstream.DoDeallocate(allocation, stream);
  }

 private:
  virtual absl::StatusOr<Allocation> DoAllocate(std::size_t bytes, Stream stream) = 0;
  virtual absl::Status DoDeallocate(const Allocation& allocation, Stream stream) = 0;
  // Resources that call the runtime with a free's stream override this; the
  // default frees on the allocation's stream.
  virtual absl::Status DoDeallocateAfterSync(const Allocation& allocation) {
    return DoDeallocate(allocation, allocation.stream);
  }
  // The refusals of Allocate and Deallocate, out of line: the calls that
  // pass their checks pay no frame for building a message.
  ABSL_ATTRIBUTE_NOINLINE absl::Status RefuseAllocate(std::size_t bytes, Stream stream) const;
  ABSL_ATTRIBUTE_NOINLINE absl::Status RefuseDeallocate(const Allocation& allocation,
                                                        Stream stream) const;
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_RESOURCE_MEMORY_RESOURCE_H_
