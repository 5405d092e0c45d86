// UnavailableBackend: what a GPU backend is when this binary or machine cannot
// provide it (toolkit absent at build time). Every call returns the same
// FailedPrecondition naming why, so callers see one clear message instead of
// a link error or a crash.
#ifndef GPUALLOC_ALLOCATOR_BACKEND_UNAVAILABLE_BACKEND_H_
#define GPUALLOC_ALLOCATOR_BACKEND_UNAVAILABLE_BACKEND_H_

#include <string>

#include "allocator/backend/backend.h"

namespace gpualloc {

class UnavailableBackend final : public Backend {
 public:
  UnavailableBackend(std::string name, std::string reason)
      : name_(std::move(name)), reason_(std::move(reason)) {}

  absl::string_view name() const override { return name_; }
  absl::StatusOr<int> DeviceCount() override { return Err(); }
  absl::StatusOr<DeviceProperties> GetDeviceProperties(DeviceIndex) override { return Err(); }
  absl::StatusOr<MemoryInfo> GetMemoryInfo(DeviceIndex) override { return Err(); }
  absl::Status SetDevice(DeviceIndex) override { return Err(); }
  absl::StatusOr<DeviceIndex> GetDevice() override { return Err(); }
  absl::Status DeviceSynchronize(DeviceIndex) override { return Err(); }
  absl::StatusOr<void*> Malloc(DeviceIndex, std::size_t) override { return Err(); }
  absl::Status Free(DeviceIndex, void*) override { return Err(); }
  absl::StatusOr<void*> MallocAsync(std::size_t, Stream) override { return Err(); }
  absl::Status FreeAsync(void*, Stream) override { return Err(); }
  absl::StatusOr<void*> HostAlloc(DeviceIndex, std::size_t) override { return Err(); }
  absl::Status HostFree(DeviceIndex, void*) override { return Err(); }
  absl::StatusOr<void*> MallocManaged(DeviceIndex, std::size_t) override { return Err(); }
  absl::Status Prefetch(const void*, std::size_t, DeviceIndex, Stream) override { return Err(); }
  absl::StatusOr<Stream> CreateStream(DeviceIndex) override { return Err(); }
  absl::Status DestroyStream(Stream) override { return Err(); }
  absl::StatusOr<Stream> CreateStreamWithPriority(DeviceIndex, int) override { return Err(); }
  absl::StatusOr<int> GetStreamPriority(Stream) override { return Err(); }
  absl::StatusOr<bool> CanAccessPeer(DeviceIndex, DeviceIndex) override { return Err(); }
  absl::Status EnablePeerAccess(DeviceIndex, DeviceIndex) override { return Err(); }
  absl::Status MemcpyPeerAsync(void*, DeviceIndex, const void*, DeviceIndex, std::size_t,
                               Stream) override {
    return Err();
  }
  absl::Status SynchronizeStream(Stream) override { return Err(); }
  absl::Status StreamWaitEvent(Stream, Event) override { return Err(); }
  absl::StatusOr<Event> CreateEvent(DeviceIndex) override { return Err(); }
  absl::Status RecordEvent(Event, Stream) override { return Err(); }
  absl::StatusOr<bool> QueryEvent(Event) override { return Err(); }
  absl::Status SynchronizeEvent(Event) override { return Err(); }
  absl::Status DestroyEvent(Event) override { return Err(); }
  absl::Status Memcpy(void*, const void*, std::size_t, CopyKind) override { return Err(); }
  absl::Status MemcpyAsync(void*, const void*, std::size_t, CopyKind, Stream) override {
    return Err();
  }
  absl::Status Memset(void*, int, std::size_t) override { return Err(); }
  absl::Status MemsetAsync(void*, int, std::size_t, Stream) override { return Err(); }
  absl::StatusOr<std::uintptr_t> VmReserve(DeviceIndex, std::size_t) override { return Err(); }
  absl::Status VmRelease(std::uintptr_t, std::size_t) override { return Err(); }
  absl::StatusOr<PhysicalChunk> VmCreate(DeviceIndex, std::size_t) override { return Err(); }
  absl::Status VmReleasePhysical(PhysicalChunk) override { return Err(); }
  absl::Status VmMap(std::uintptr_t, PhysicalChunk) override { return Err(); }
  absl::Status VmSetAccess(std::uintptr_t, std::size_t, DeviceIndex) override { return Err(); }
  absl::Status VmUnmap(std::uintptr_t, std::size_t) override { return Err(); }

 private:
  absl::Status Err() const { return absl::FailedPreconditionError(reason_); }
  std::string name_;
  std::string reason_;
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_BACKEND_UNAVAILABLE_BACKEND_H_
