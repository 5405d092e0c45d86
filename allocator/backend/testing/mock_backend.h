// A GoogleMock Backend for tests that script one scenario exactly ("the third
// Malloc fails"). For randomized or seeded faults use FailpointBackend.
#ifndef GPUALLOC_ALLOCATOR_BACKEND_TESTING_MOCK_BACKEND_H_
#define GPUALLOC_ALLOCATOR_BACKEND_TESTING_MOCK_BACKEND_H_

#include "allocator/backend/backend.h"
#include "gmock/gmock.h"

namespace gpualloc {

class MockBackend : public Backend {
 public:
  MOCK_METHOD(absl::string_view, name, (), (const, override));
  MOCK_METHOD(absl::StatusOr<int>, DeviceCount, (), (override));
  MOCK_METHOD(absl::StatusOr<DeviceProperties>, GetDeviceProperties, (DeviceIndex), (override));
  MOCK_METHOD(absl::StatusOr<MemoryInfo>, GetMemoryInfo, (DeviceIndex), (override));
  MOCK_METHOD(absl::Status, SetDevice, (DeviceIndex), (override));
  MOCK_METHOD(absl::StatusOr<DeviceIndex>, GetDevice, (), (override));
  MOCK_METHOD(absl::Status, DeviceSynchronize, (DeviceIndex), (override));
  MOCK_METHOD(absl::StatusOr<void*>, Malloc, (DeviceIndex, std::size_t), (override));
  MOCK_METHOD(absl::Status, Free, (DeviceIndex, void*), (override));
  MOCK_METHOD(absl::StatusOr<void*>, MallocAsync, (std::size_t, Stream), (override));
  MOCK_METHOD(absl::Status, FreeAsync, (void*, Stream), (override));
  MOCK_METHOD(absl::StatusOr<void*>, HostAlloc, (DeviceIndex, std::size_t), (override));
  MOCK_METHOD(absl::Status, HostFree, (DeviceIndex, void*), (override));
  MOCK_METHOD(absl::StatusOr<void*>, MallocManaged, (DeviceIndex, std::size_t), (override));
  MOCK_METHOD(absl::Status, Prefetch, (const void*, std::size_t, DeviceIndex, Stream),
              (override));
  MOCK_METHOD(absl::StatusOr<Stream>, CreateStream, (DeviceIndex), (override));
  MOCK_METHOD(absl::Status, DestroyStream, (Stream), (override));
  MOCK_METHOD(absl::Status, SynchronizeStream, (Stream), (override));
  MOCK_METHOD(absl::Status, StreamWaitEvent, (Stream, Event), (override));
  MOCK_METHOD(absl::StatusOr<Event>, CreateEvent, (DeviceIndex), (override));
  MOCK_METHOD(absl::Status, RecordEvent, (Event, Stream), (override));
  MOCK_METHOD(absl::StatusOr<bool>, QueryEvent, (Event), (override));
  MOCK_METHOD(absl::Status, SynchronizeEvent, (Event), (override));
  MOCK_METHOD(absl::Status, DestroyEvent, (Event), (override));
  MOCK_METHOD(absl::Status, Memcpy, (void*, const void*, std::size_t, CopyKind), (override));
  MOCK_METHOD(absl::Status, MemcpyAsync, (void*, const void*, std::size_t, CopyKind, Stream),
              (override));
  MOCK_METHOD(absl::Status, Memset, (void*, int, std::size_t), (override));
  MOCK_METHOD(absl::Status, MemsetAsync, (void*, int, std::size_t, Stream), (override));
  MOCK_METHOD(absl::StatusOr<std::uintptr_t>, VmReserve, (DeviceIndex, std::size_t),
              (override));
  MOCK_METHOD(absl::Status, VmRelease, (std::uintptr_t, std::size_t), (override));
  MOCK_METHOD(absl::StatusOr<PhysicalChunk>, VmCreate, (DeviceIndex, std::size_t), (override));
  MOCK_METHOD(absl::Status, VmReleasePhysical, (PhysicalChunk), (override));
  MOCK_METHOD(absl::Status, VmMap, (std::uintptr_t, PhysicalChunk), (override));
  MOCK_METHOD(absl::Status, VmSetAccess, (std::uintptr_t, std::size_t, DeviceIndex),
              (override));
  MOCK_METHOD(absl::Status, VmUnmap, (std::uintptr_t, std::size_t), (override));
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_BACKEND_TESTING_MOCK_BACKEND_H_
