// FailpointBackend: wraps any Backend and makes chosen calls fail, throw or
// stall, so the allocators' error paths run on every machine.
//
//   auto faulty = std::make_shared<FailpointBackend>(sim, /*seed=*/42);
//   faulty->AddRule(FaultRule::NthCall(BackendOp::kMalloc, 3,
//                                      FaultAction::kThrowBadAlloc));
//
// Host accesses (BackendOp::kHostAccess, from NoteHostAccess) are not runtime
// calls: only a rule that names kHostAccess fails them, a sticky error leaves
// them alone, and total_calls() does not count them.
//
// Reproducible: which calls fire depends only on the rules, the seed and the
// order of calls, so a failure found with seed S recurs with seed S.
// Thread-safe: rules, counters and the generator sit behind one mutex; the
// wrapped call itself runs outside it.
#ifndef GPUALLOC_ALLOCATOR_BACKEND_FAILPOINTS_FAILPOINT_BACKEND_H_
#define GPUALLOC_ALLOCATOR_BACKEND_FAILPOINTS_FAILPOINT_BACKEND_H_

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "allocator/backend/backend.h"
#include "allocator/backend/failpoints/fault_rule.h"

namespace gpualloc {

class FailpointBackend final : public Backend {
 public:
  FailpointBackend(std::shared_ptr<Backend> inner, std::uint64_t seed);

  // Adds a rule; rules are checked in the order added and the first that
  // fires decides the call.
  void AddRule(FaultRule rule);
  void ClearRules();
  // Turns a sticky error off again (tests of recovery).
  void ClearStickyError();

  // Calls seen so far (faulted or not), per operation and in total (host
  // accesses aside).
  std::uint64_t calls(BackendOp op) const;
  std::uint64_t total_calls() const;
  std::uint64_t faults_fired() const;
  Backend& inner() { return *inner_; }

  absl::string_view name() const override { return name_; }
  absl::StatusOr<int> DeviceCount() override;
  absl::StatusOr<DeviceProperties> GetDeviceProperties(DeviceIndex device) override;
  absl::StatusOr<MemoryInfo> GetMemoryInfo(DeviceIndex device) override;
  absl::Status SetDevice(DeviceIndex device) override;
  absl::StatusOr<DeviceIndex> GetDevice() override;
  absl::Status DeviceSynchronize(DeviceIndex device) override;
  absl::StatusOr<void*> Malloc(DeviceIndex device, std::size_t bytes) override;
  absl::Status Free(DeviceIndex device, void* ptr) override;
  absl::StatusOr<void*> MallocAsync(std::size_t bytes, Stream stream) override;
  absl::Status FreeAsync(void* ptr, Stream stream) override;
  absl::StatusOr<void*> HostAlloc(DeviceIndex device, std::size_t bytes) override;
  absl::Status HostFree(DeviceIndex device, void* ptr) override;
  absl::StatusOr<void*> MallocManaged(DeviceIndex device, std::size_t bytes) override;
  absl::Status Prefetch(const void* ptr, std::size_t bytes, DeviceIndex destination,
                        Stream stream) override;
  absl::StatusOr<Stream> CreateStream(DeviceIndex device) override;
  absl::StatusOr<Stream> CreateStreamWithPriority(DeviceIndex device, int priority) override;
  absl::StatusOr<int> GetStreamPriority(Stream stream) override;
  absl::StatusOr<bool> CanAccessPeer(DeviceIndex device, DeviceIndex peer) override;
  absl::Status EnablePeerAccess(DeviceIndex device, DeviceIndex peer) override;
  absl::Status MemcpyPeerAsync(void* dst, DeviceIndex dst_device, const void* src,
                               DeviceIndex src_device, std::size_t bytes, Stream stream) override;
  absl::Status DestroyStream(Stream stream) override;
  absl::Status SynchronizeStream(Stream stream) override;
  absl::Status StreamWaitEvent(Stream stream, Event event) override;
  absl::StatusOr<Event> CreateEvent(DeviceIndex device) override;
  absl::Status RecordEvent(Event event, Stream stream) override;
  absl::StatusOr<bool> QueryEvent(Event event) override;
  absl::Status SynchronizeEvent(Event event) override;
  absl::Status DestroyEvent(Event event) override;
  absl::Status Memcpy(void* dst, const void* src, std::size_t bytes, CopyKind kind) override;
  absl::Status MemcpyAsync(void* dst, const void* src, std::size_t bytes, CopyKind kind,
                           Stream stream) override;
  absl::Status Memset(void* dst, int value, std::size_t bytes) override;
  absl::Status MemsetAsync(void* dst, int value, std::size_t bytes, Stream stream) override;
  absl::StatusOr<std::uintptr_t> VmReserve(DeviceIndex device, std::size_t bytes) override;
  absl::Status VmRelease(std::uintptr_t address, std::size_t bytes) override;
  absl::StatusOr<PhysicalChunk> VmCreate(DeviceIndex device, std::size_t bytes) override;
  absl::Status VmReleasePhysical(PhysicalChunk chunk) override;
  absl::Status VmMap(std::uintptr_t address, PhysicalChunk chunk) override;
  absl::Status VmSetAccess(std::uintptr_t address, std::size_t bytes,
                           DeviceIndex device) override;
  absl::Status VmUnmap(std::uintptr_t address, std::size_t bytes) override;
  // Forwarded, never faulted: it is a note to the checker, not a runtime call.
  absl::Status LaunchHostFunc(Stream stream, void (*fn)(void*), void* data) override {
    return inner_->LaunchHostFunc(stream, fn, data);
  }
  absl::Status NoteHostAccess(const void* ptr, std::size_t bytes, AccessMode mode) override;

 private:
  // Counts the call and applies the first rule that fires: returns the error
  // to report, throws, or sleeps and returns OK so the call goes ahead.
  absl::Status Intercept(BackendOp op, DeviceIndex device = 0, std::size_t bytes = 0,
                         const void* ptr = nullptr);

  const std::shared_ptr<Backend> inner_;
  const std::string name_;
  mutable std::mutex mu_;
  std::mt19937_64 rng_;
  struct ActiveRule {
    FaultRule rule;
    std::int64_t fires = 0;
  };
  std::vector<ActiveRule> rules_;
  std::array<std::uint64_t, kBackendOpCount> calls_{};
  std::uint64_t faults_fired_ = 0;
  bool sticky_ = false;
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_BACKEND_FAILPOINTS_FAILPOINT_BACKEND_H_
