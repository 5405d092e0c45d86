// SimBackend: a simulated GPU, the default backend of the harness and of every
// test on machines without a device. It is meant to fail where a real GPU
// would:
//  - each device has a capacity, an alignment and an address space that
//    fragments; Malloc beyond it is out-of-memory;
//  - every allocation is real host memory, so data round-trips, with canary
//    guards on both sides (poisoned under ASan) checked at free;
//  - the current device is per thread, as with cudaSetDevice;
//  - streams run their work asynchronously and in order on worker threads;
//    events complete when their stream passes them; memory freed with
//    FreeAsync becomes reusable only when its stream reaches the free;
//  - virtual memory is real: reservations are PROT_NONE mappings, physical
//    chunks are memfd objects mapped with MAP_FIXED, inaccessible until
//    VmSetAccess;
//  - managed memory tracks per-page residency and counts migrations;
//  - a cost model adds latency per call, and Accounting() counts every call
//    and every byte outstanding, which the harness uses as ground truth;
//  - a stream-order checker (stream_order_checker.h), on by default, judges
//    every asynchronous access, release and host access by happens-before,
//    so memory reused, unmapped or rewritten while queued work may still
//    touch it is reported, naming both accesses. An access that finds its
//    memory gone when it runs is skipped and reported instead of crashing.
//
// Thread-safe: all methods may be called from any thread.
#ifndef GPUALLOC_ALLOCATOR_BACKEND_SIM_SIM_BACKEND_H_
#define GPUALLOC_ALLOCATOR_BACKEND_SIM_SIM_BACKEND_H_

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "allocator/backend/backend.h"
#include "allocator/backend/sim/address_space.h"
#include "allocator/backend/sim/sim_options.h"
#include "allocator/backend/sim/stream_order_checker.h"
#include "allocator/backend/sim/stream_worker.h"

namespace gpualloc {

// A snapshot of what the simulated devices have handed out.
struct SimAccounting {
  struct Device {
    std::size_t device_bytes = 0;       // Malloc/MallocAsync/VmCreate bytes live
    std::size_t peak_device_bytes = 0;
    std::size_t live_allocations = 0;   // Malloc + MallocAsync + MallocManaged
    std::size_t managed_bytes = 0;
    std::size_t pinned_bytes = 0;       // HostAlloc owned by this device
    std::size_t vm_reserved_bytes = 0;
    std::size_t vm_physical_bytes = 0;
    std::size_t free_address_space = 0;
    std::size_t largest_free_range = 0;
    std::uint64_t page_migrations = 0;
  };
  std::vector<Device> devices;
  std::array<std::uint64_t, kBackendOpCount> calls{};
  std::size_t live_streams = 0;   // not counting default streams
  std::size_t live_events = 0;
  std::uint64_t guard_violations = 0;

  // The stream-order checker's totals (all zero when it is switched off).
  StreamOrderStats stream_order;

  std::uint64_t calls_to(BackendOp op) const { return calls[static_cast<int>(op)]; }
  // True when no memory, stream or event is outstanding on any device.
  bool AllReleased() const;
  // One line per device with anything outstanding (and the stream-order
  // violations, if any), e.g. for a failed check.
  std::string Describe() const;
};

// A sim-only gate on a stream (SimBackend::HoldStream): work enqueued on the
// stream after it waits until the gate opens, so a test keeps work in flight
// deterministically instead of racing latencies. Opens at destruction.
// Move-only; thread-safe.
class SimStreamGate {
 public:
  SimStreamGate() = default;
  SimStreamGate(SimStreamGate&&) = default;
  SimStreamGate& operator=(SimStreamGate&& other) noexcept {
    if (this != &other) {
      Open();
      state_ = std::move(other.state_);
    }
    return *this;
  }
  ~SimStreamGate() { Open(); }
  // Lets the held work run; idempotent.
  void Open();

 private:
  friend class SimBackend;
  struct State;
  std::shared_ptr<State> state_;
};

class SimBackend final : public Backend {
 public:
  explicit SimBackend(SimOptions options = {});
  // Drains every stream. Memory still live is released and reported on
  // stderr (it is a leak in the code under test, not in the sim).
  ~SimBackend() override;
  SimBackend(const SimBackend&) = delete;
  SimBackend& operator=(const SimBackend&) = delete;

  const SimOptions& options() const { return options_; }
  // Thread-safe snapshot. Cheap enough to call after every harness step.
  SimAccounting Accounting() const;

  // The stream-order checker; null when SimOptions::check_stream_order is off.
  const StreamOrderChecker* stream_order() const { return checker_.get(); }
  // OK, or FailedPrecondition carrying the checker's report of every
  // stream-order violation so far (what the shared invariants call).
  absl::Status CheckStreamOrder() const;

  // A sim-only "kernel": work on `stream` that reads or writes each of
  // `args` (device, managed or pinned memory) and takes `duration_ns` of
  // simulated time, so tests can model compute. A write sets its bytes to
  // `fill`. Checked like any other stream work.
  struct KernelArg {
    void* ptr = nullptr;
    std::size_t bytes = 0;
    AccessMode mode = AccessMode::kRead;
    unsigned char fill = 0;
  };
  absl::Status LaunchKernel(Stream stream, std::vector<KernelArg> args,
                            std::int64_t duration_ns = 0, const char* name = "kernel");

  // Holds `stream` (sim only): work enqueued on it from now on waits until
  // the returned gate is opened. The gate itself touches no memory, so the
  // stream-order checker does not see it: an access enqueued behind it is
  // judged as if the stream were merely slow. Open the gate before anything
  // waits for the stream (SynchronizeStream, DeviceSynchronize, Free, ...),
  // or that wait never ends. FailedPrecondition under a deterministic
  // schedule, whose stream workers must never block.
  absl::StatusOr<SimStreamGate> HoldStream(Stream stream);

  absl::string_view name() const override { return "sim"; }
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
  absl::Status NoteHostAccess(const void* ptr, std::size_t bytes, AccessMode mode) override;

 private:
  enum class MemoryKind { kDevice, kAsync, kManaged, kPinned };
  struct Allocation;
  struct DeviceState;
  struct EventState;
  struct Reservation;
  struct Chunk;
  // Where a byte range lives, for copy-direction checks.
  using ChunkMap = absl::flat_hash_map<std::uintptr_t, std::unique_ptr<Chunk>>;
  enum class Location { kDevice, kManaged, kPinnedHost, kPageableHost, kInvalid };

  absl::Status CheckDevice(DeviceIndex device) const;
  // Every stream of `device` (or of all devices), in a fixed order.
  std::vector<std::shared_ptr<SimStreamWorker>> WorkersOn(DeviceIndex device) const;
  absl::StatusOr<std::shared_ptr<SimStreamWorker>> WorkerFor(Stream stream);

  // Waits for every stream of `device` (or of every device, kAllDevices),
  // without holding mu_ while waiting; the stream-order checker then knows
  // the host has seen all that work.
  static constexpr DeviceIndex kAllDevices = -2;
  void DrainDevice(DeviceIndex device);
  // Where `event` was recorded: its stream (null if never recorded) and seq.
  absl::Status RecordedPosition(Event event, std::shared_ptr<SimStreamWorker>* worker,
                                std::uint64_t* seq, VectorClock* clock = nullptr) const;
  absl::StatusOr<void*> AllocateBacked(MemoryKind kind, DeviceIndex device, std::size_t bytes);
  // Releases a live allocation; mu_ must be held.
  absl::Status ReleaseLocked(std::map<std::uintptr_t, Allocation>::iterator it);
  void DestroyChunkLocked(ChunkMap::iterator it);  // mu_ held
  // The mappings that exactly cover [address, address+bytes) of one
  // reservation (starting at a mapping, whole and contiguous), or
  // InvalidArgument saying why not. mu_ held.
  struct CoveredRange;
  absl::StatusOr<CoveredRange> CoveredMappingsLocked(std::uintptr_t address, std::size_t bytes);
  // mu_ held. `ref` (optional) receives the allocation the range lies in.
  Location Locate(const void* ptr, std::size_t bytes, DeviceIndex* device,
                  AllocationRef* ref = nullptr) const;
  // --- stream-order checking (no-ops when the checker is off) ---
  // Appends the access of [ptr, ptr+bytes) in `mode`, found by Locate at
  // `at` in `ref`, if it is memory the device knows (pageable host memory is
  // the program's own and is not tracked).
  static void TrackAccess(const void* ptr, std::size_t bytes, AccessMode mode, Location at,
                          const AllocationRef& ref, std::vector<RangeAccess>* out);
  int ActorOf(const SimStreamWorker& worker) const { return worker.checker_actor(); }
  // Enqueues `body` on `worker` after checking `accesses`; when it runs,
  // each access's memory must still be there, or it is skipped and reported.
  std::uint64_t EnqueueChecked(SimStreamWorker& worker, std::vector<RangeAccess> accesses,
                               const char* what, std::function<void()> body);
  // The host has waited for everything enqueued so far on `workers`.
  void HostWaited(const std::vector<std::shared_ptr<SimStreamWorker>>& workers);
  // A worker thread for `stream`. The machine may refuse a thread (too many
  // streams for it): ResourceExhausted, never a throw.
  absl::StatusOr<std::shared_ptr<SimStreamWorker>> NewWorker(Stream stream);
  // OK when [dst, dst+bytes) is device or managed memory; sets its device
  // and appends the write to `accesses`, from the one lookup.
  absl::Status CheckMemsetTarget(void* dst, std::size_t bytes, DeviceIndex* device,
                                 std::vector<RangeAccess>* accesses) const;
  // OK when the copy's pointers are where `kind` says; sets the device that
  // runs it and appends its read and write to `accesses`, from the one lookup.
  absl::Status CheckCopy(void* dst, const void* src, std::size_t bytes, CopyKind kind,
                         DeviceIndex* device, std::vector<RangeAccess>* accesses) const;
  // Counts a call at its entry. Under a deterministic schedule the entry of
  // every device call is also a scheduling point, as a driver call is a place
  // where real threads interleave. Never called with mu_ held.
  void Count(BackendOp op) {
    calls_[static_cast<int>(op)].fetch_add(1, std::memory_order_relaxed);
    if (options_.scheduler != nullptr && CooperativeScheduler::Current() == options_.scheduler) {
      options_.scheduler->Yield();
    }
  }

  const SimOptions options_;
  const std::uint64_t instance_id_;
  const std::unique_ptr<StreamOrderChecker> checker_;  // null when off
  // Held shared by stream work while it touches memory, exclusively by
  // whatever unmaps or frees memory: queued work never touches memory that
  // is being taken away (it finds it gone, and is reported, instead).
  mutable std::shared_mutex exec_mu_;

  mutable std::mutex mu_;  // guards everything below, except the workers' own state
  std::vector<std::unique_ptr<DeviceState>> devices_;
  std::map<std::uintptr_t, Allocation> allocations_;  // by user pointer
  std::size_t pinned_bytes_total_ = 0;
  absl::flat_hash_map<std::uintptr_t, std::shared_ptr<SimStreamWorker>> streams_;
  // Handles of destroyed streams: naming one again is reported to the checker.
  absl::flat_hash_set<std::uintptr_t> destroyed_streams_;
  absl::flat_hash_map<std::uintptr_t, int> stream_priorities_;  // those not 0
  // (device, peer): kernels on `device` may use `peer`'s memory.
  absl::flat_hash_set<std::pair<DeviceIndex, DeviceIndex>> peer_enabled_;
  absl::flat_hash_map<std::uintptr_t, std::unique_ptr<EventState>> events_;
  std::map<std::uintptr_t, Reservation> reservations_;  // by base address
  ChunkMap chunks_;
  std::uintptr_t next_handle_ = 1;
  std::uint64_t guard_violations_ = 0;

  std::array<std::atomic<std::uint64_t>, kBackendOpCount> calls_{};
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_BACKEND_SIM_SIM_BACKEND_H_
