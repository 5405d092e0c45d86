// A runtime double for the pinned host allocator's tests: it allocates
// nothing with operator new itself (so a test that makes operator new fail
// hits only the allocator's bookkeeping), keeps its state in plain fields,
// and lets a test hold events incomplete and act at a chosen QueryEvent.
// Single-threaded use only. Test-only.
#ifndef GPUALLOC_ALLOCATOR_HOST_HOST_ONLY_BACKEND_FOR_TEST_H_
#define GPUALLOC_ALLOCATOR_HOST_HOST_ONLY_BACKEND_FOR_TEST_H_

#include <cstdint>
#include <cstdlib>
#include <functional>

#include "allocator/backend/backend.h"

namespace gpualloc::testing_support {

// A runtime double that itself allocates nothing with operator new, so only
// the allocator's own bookkeeping meets the failing allocations: pinned
// memory is malloc'ed and counted, events complete at once (unless held), a stream is
// always idle. Everything the pinned allocator does not use is Unimplemented.
class HostOnlyBackend final : public Backend {
 public:
  std::int64_t outstanding() const { return outstanding_; }
  // Events recorded from now on stay incomplete until CompleteAll().
  void HoldNewEvents() { hold_ = true; }
  void CompleteAll() {
    hold_ = false;
    held_count_ = 0;
  }
  // Runs once, on the next QueryEvent, before it answers (a place for a test
  // to act while the caller is between its own steps).
  void OnNextQuery(std::function<void()> hook) { on_query_ = std::move(hook); }

  absl::string_view name() const override { return "host-only"; }
  absl::StatusOr<void*> HostAlloc(DeviceIndex, std::size_t bytes) override {
    void* p = std::malloc(bytes);
    if (p == nullptr) return absl::ResourceExhaustedError("host-only: out of memory");
    ++outstanding_;
    return p;
  }
  absl::Status HostFree(DeviceIndex, void* ptr) override {
    std::free(ptr);
    --outstanding_;
    return absl::OkStatus();
  }
  absl::Status SetDevice(DeviceIndex device) override {
    current_ = device;
    return absl::OkStatus();
  }
  absl::StatusOr<DeviceIndex> GetDevice() override { return current_; }
  absl::StatusOr<Event> CreateEvent(DeviceIndex device) override {
    return Event{static_cast<std::uintptr_t>(++events_), device};
  }
  absl::Status RecordEvent(Event e, Stream) override {
    if (hold_ && held_count_ < kMaxHeld) held_[held_count_++] = e.handle;
    return absl::OkStatus();
  }
  absl::StatusOr<bool> QueryEvent(Event e) override {
    if (on_query_) {
      std::function<void()> hook = std::move(on_query_);
      on_query_ = nullptr;
      hook();
    }
    for (std::size_t i = 0; i < held_count_; ++i) {
      if (held_[i] == e.handle) return false;
    }
    return true;
  }
  absl::Status SynchronizeEvent(Event) override { return absl::OkStatus(); }
  absl::Status DestroyEvent(Event) override { return absl::OkStatus(); }
  absl::Status SynchronizeStream(Stream) override { return absl::OkStatus(); }

#define GPUALLOC_UNUSED(ret, sig) \
  ret sig override { return absl::UnimplementedError("host-only backend"); }
  GPUALLOC_UNUSED(absl::StatusOr<int>, DeviceCount())
  GPUALLOC_UNUSED(absl::StatusOr<DeviceProperties>, GetDeviceProperties(DeviceIndex))
  GPUALLOC_UNUSED(absl::StatusOr<MemoryInfo>, GetMemoryInfo(DeviceIndex))
  GPUALLOC_UNUSED(absl::Status, DeviceSynchronize(DeviceIndex))
  GPUALLOC_UNUSED(absl::StatusOr<void*>, Malloc(DeviceIndex, std::size_t))
  GPUALLOC_UNUSED(absl::Status, Free(DeviceIndex, void*))
  GPUALLOC_UNUSED(absl::StatusOr<void*>, MallocAsync(std::size_t, Stream))
  GPUALLOC_UNUSED(absl::Status, FreeAsync(void*, Stream))
  GPUALLOC_UNUSED(absl::StatusOr<void*>, MallocManaged(DeviceIndex, std::size_t))
  GPUALLOC_UNUSED(absl::Status, Prefetch(const void*, std::size_t, DeviceIndex, Stream))
  GPUALLOC_UNUSED(absl::StatusOr<Stream>, CreateStream(DeviceIndex))
  GPUALLOC_UNUSED(absl::Status, DestroyStream(Stream))
  GPUALLOC_UNUSED(absl::Status, StreamWaitEvent(Stream, Event))
  GPUALLOC_UNUSED(absl::Status, Memcpy(void*, const void*, std::size_t, CopyKind))
  GPUALLOC_UNUSED(absl::Status, MemcpyAsync(void*, const void*, std::size_t, CopyKind, Stream))
  GPUALLOC_UNUSED(absl::Status, Memset(void*, int, std::size_t))
  GPUALLOC_UNUSED(absl::Status, MemsetAsync(void*, int, std::size_t, Stream))
  GPUALLOC_UNUSED(absl::StatusOr<std::uintptr_t>, VmReserve(DeviceIndex, std::size_t))
  GPUALLOC_UNUSED(absl::Status, VmRelease(std::uintptr_t, std::size_t))
  GPUALLOC_UNUSED(absl::StatusOr<PhysicalChunk>, VmCreate(DeviceIndex, std::size_t))
  GPUALLOC_UNUSED(absl::Status, VmReleasePhysical(PhysicalChunk))
  GPUALLOC_UNUSED(absl::Status, VmMap(std::uintptr_t, PhysicalChunk))
  GPUALLOC_UNUSED(absl::Status, VmSetAccess(std::uintptr_t, std::size_t, DeviceIndex))
  GPUALLOC_UNUSED(absl::Status, VmUnmap(std::uintptr_t, std::size_t))
#undef GPUALLOC_UNUSED

 private:
  static constexpr std::size_t kMaxHeld = 16;
  std::int64_t outstanding_ = 0;
  std::uint64_t events_ = 0;
  DeviceIndex current_ = 0;
  bool hold_ = false;
  std::uintptr_t held_[kMaxHeld] = {};  // no operator new: a fixed array
  std::size_t held_count_ = 0;
  std::function<void()> on_query_;
};

}  // namespace gpualloc::testing_support

#endif  // GPUALLOC_ALLOCATOR_HOST_HOST_ONLY_BACKEND_FOR_TEST_H_
