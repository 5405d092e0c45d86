#include "allocator/backend/sim/sim_backend.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "allocator/common/checked_math.h"
#include "allocator/common/status_macros.h"

#if defined(__SANITIZE_ADDRESS__)
#define GPUALLOC_SIM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GPUALLOC_SIM_ASAN 1
#endif
#endif

#ifdef GPUALLOC_SIM_ASAN
#include <sanitizer/asan_interface.h>
#define SIM_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define SIM_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define SIM_POISON(p, n) ((void)(p), (void)(n))
#define SIM_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

namespace gpualloc {
namespace {

constexpr unsigned char kGuardByte = 0xFD;

std::atomic<std::uint64_t> g_next_instance_id{1};

// The current device of each thread, per SimBackend instance (keyed by a
// never-reused id, so a new backend at an old address starts fresh).
thread_local absl::flat_hash_map<std::uint64_t, DeviceIndex> tls_current_device;

// Simulated latency: spins for short waits (sleep is too coarse), sleeps for
// long ones.
void SimulateLatency(std::int64_t ns) {
  if (ns <= 0) return;
  if (ns >= 200'000) {
    std::this_thread::sleep_for(std::chrono::nanoseconds(ns));
    return;
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::nanoseconds(ns);
  while (std::chrono::steady_clock::now() < deadline) {
  }
}

absl::Status SimError(absl::StatusCode code, absl::string_view error_name,
                      absl::string_view message) {
  return absl::Status(code, absl::StrCat(error_name, ": ", message));
}

std::string Hex(const void* p) { return absl::StrFormat("%p", p); }

}  // namespace

struct SimBackend::Allocation {
  MemoryKind kind;
  DeviceIndex device;
  std::size_t bytes;     // requested
  std::size_t reserved;  // rounded; what the address space lost
  std::size_t offset;    // in the device's address space (device kinds)
  unsigned char* base;   // start of the host block, guard included
  bool free_pending = false;
  std::vector<DeviceIndex> residency;  // managed memory: owner of each page
};

struct SimBackend::DeviceState {
  explicit DeviceState(const SimDeviceConfig& c) : config(c), space(c.capacity_bytes) {}
  SimDeviceConfig config;
  SimAddressSpace space;
  std::shared_ptr<SimStreamWorker> default_stream;
  std::size_t device_bytes = 0;
  std::size_t peak_device_bytes = 0;
  std::size_t live_allocations = 0;
  std::size_t managed_bytes = 0;
  std::size_t pinned_bytes = 0;
  std::size_t vm_reserved_bytes = 0;
  std::size_t vm_physical_bytes = 0;
  std::uint64_t page_migrations = 0;

  void AddDeviceBytes(std::size_t n) {
    device_bytes += n;
    peak_device_bytes = std::max(peak_device_bytes, device_bytes);
  }
};

struct SimBackend::EventState {
  DeviceIndex device;
  std::shared_ptr<SimStreamWorker> worker;  // null until recorded
  std::uint64_t seq = 0;
};

struct SimBackend::Reservation {
  struct Mapping {
    std::size_t bytes;
    std::uintptr_t chunk;
    bool accessible;
  };
  DeviceIndex device;
  std::size_t bytes;
  std::map<std::uintptr_t, Mapping> mappings;  // by address
};

struct SimBackend::Chunk {
  DeviceIndex device;
  std::size_t bytes;
  std::size_t offset;
  int fd;
  int map_count = 0;
  bool released = false;
};

bool SimAccounting::AllReleased() const {
  for (const Device& d : devices) {
    if (d.device_bytes || d.live_allocations || d.managed_bytes || d.pinned_bytes ||
        d.vm_reserved_bytes || d.vm_physical_bytes) {
      return false;
    }
  }
  return live_streams == 0 && live_events == 0;
}

std::string SimAccounting::Describe() const {
  std::string out;
  for (std::size_t i = 0; i < devices.size(); ++i) {
    const Device& d = devices[i];
    if (d.device_bytes || d.live_allocations || d.managed_bytes || d.pinned_bytes ||
        d.vm_reserved_bytes || d.vm_physical_bytes) {
      absl::StrAppendFormat(&out,
                            "sim device %d: %d device bytes in %d allocations, %d managed, %d "
                            "pinned, %d VM reserved, %d VM physical still live\n",
                            i, d.device_bytes, d.live_allocations, d.managed_bytes,
                            d.pinned_bytes, d.vm_reserved_bytes, d.vm_physical_bytes);
    }
  }
  if (live_streams || live_events) {
    absl::StrAppendFormat(&out, "sim: %d streams and %d events not destroyed\n", live_streams,
                          live_events);
  }
  if (guard_violations) {
    absl::StrAppendFormat(&out, "sim: %d guard violations (buffer overruns)\n", guard_violations);
  }
  return out.empty() ? "sim: nothing outstanding\n" : out;
}

SimBackend::SimBackend(SimOptions options)
    : options_(std::move(options)), instance_id_(g_next_instance_id.fetch_add(1)) {
  for (const SimDeviceConfig& config : options_.devices) {
    devices_.push_back(std::make_unique<DeviceState>(config));
  }
}

SimBackend::~SimBackend() {
  // Stop the workers first: their tasks lock mu_ and touch the maps.
  std::vector<std::shared_ptr<SimStreamWorker>> workers = WorkersOn(kAllDevices);
  for (auto& worker : workers) worker->Drain();
  {
    // Workers are stopped outside the lock: stopping one may wait for a turn
    // of a deterministic schedule. Events hold workers too.
    absl::flat_hash_map<std::uintptr_t, std::unique_ptr<EventState>> events;
    {
      std::lock_guard<std::mutex> lock(mu_);
      events.swap(events_);
      streams_.clear();
      for (auto& device : devices_) device->default_stream.reset();
    }
    events.clear();
    workers.clear();
  }
  std::lock_guard<std::mutex> lock(mu_);

  SimAccounting leftover;
  if (!allocations_.empty() || !reservations_.empty() || !chunks_.empty()) {
    std::fprintf(stderr,
                 "SimBackend: %zu allocations, %zu VM reservations and %zu physical chunks "
                 "were still live at destruction; releasing them.\n",
                 allocations_.size(), reservations_.size(), chunks_.size());
  }
  for (auto& [ptr, a] : allocations_) {
    SIM_UNPOISON(a.base, a.reserved + 2 * options_.guard_bytes);
    std::free(a.base);
  }
  for (auto& [base, r] : reservations_) munmap(reinterpret_cast<void*>(base), r.bytes);
  for (auto& [handle, chunk] : chunks_) close(chunk->fd);
}

SimAccounting SimBackend::Accounting() const {
  SimAccounting out;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& d : devices_) {
    SimAccounting::Device a;
    a.device_bytes = d->device_bytes;
    a.peak_device_bytes = d->peak_device_bytes;
    a.live_allocations = d->live_allocations;
    a.managed_bytes = d->managed_bytes;
    a.pinned_bytes = d->pinned_bytes;
    a.vm_reserved_bytes = d->vm_reserved_bytes;
    a.vm_physical_bytes = d->vm_physical_bytes;
    a.free_address_space = d->space.free_bytes();
    a.largest_free_range = d->space.largest_free_range();
    a.page_migrations = d->page_migrations;
    out.devices.push_back(a);
  }
  for (int i = 0; i < kBackendOpCount; ++i) out.calls[i] = calls_[i].load(std::memory_order_relaxed);
  out.live_streams = streams_.size();
  out.live_events = events_.size();
  out.guard_violations = guard_violations_;
  return out;
}

absl::Status SimBackend::CheckDevice(DeviceIndex device) const {
  if (device < 0 || device >= static_cast<int>(options_.devices.size())) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidDevice",
                    absl::StrFormat("device %d does not exist (this sim has %d devices)", device,
                                    options_.devices.size()));
  }
  return absl::OkStatus();
}

// --- devices ------------------------------------------------------------------

absl::StatusOr<int> SimBackend::DeviceCount() {
  Count(BackendOp::kDeviceCount);
  return static_cast<int>(options_.devices.size());
}

absl::StatusOr<DeviceProperties> SimBackend::GetDeviceProperties(DeviceIndex device) {
  Count(BackendOp::kDeviceProperties);
  GPUALLOC_RETURN_IF_ERROR(CheckDevice(device));
  const SimDeviceConfig& c = options_.devices[device];
  DeviceProperties p;
  p.name = c.name;
  p.total_bytes = c.capacity_bytes;
  p.alignment = c.alignment;
  p.supports_stream_ordered_alloc = options_.stream_ordered_alloc;
  p.supports_managed_memory = options_.managed_memory;
  p.supports_virtual_memory = options_.virtual_memory;
  p.vm_granularity = options_.virtual_memory ? c.vm_granularity : 0;
  return p;
}

absl::StatusOr<MemoryInfo> SimBackend::GetMemoryInfo(DeviceIndex device) {
  Count(BackendOp::kMemoryInfo);
  GPUALLOC_RETURN_IF_ERROR(CheckDevice(device));
  std::lock_guard<std::mutex> lock(mu_);
  return MemoryInfo{devices_[device]->space.free_bytes(), devices_[device]->space.capacity()};
}

absl::Status SimBackend::SetDevice(DeviceIndex device) {
  Count(BackendOp::kSetDevice);
  GPUALLOC_RETURN_IF_ERROR(CheckDevice(device));
  tls_current_device[instance_id_] = device;
  return absl::OkStatus();
}

absl::StatusOr<DeviceIndex> SimBackend::GetDevice() {
  Count(BackendOp::kGetDevice);
  auto it = tls_current_device.find(instance_id_);
  return it == tls_current_device.end() ? 0 : it->second;
}

std::vector<std::shared_ptr<SimStreamWorker>> SimBackend::WorkersOn(DeviceIndex device) const {
  std::vector<std::shared_ptr<SimStreamWorker>> workers;
  std::lock_guard<std::mutex> lock(mu_);
  // In handle order, not hash order, so a scheduled run waits on the same
  // streams in the same order every time.
  std::vector<std::uintptr_t> handles;
  for (auto& [handle, worker] : streams_) {
    if (device == kAllDevices || worker->device() == device) handles.push_back(handle);
  }
  std::sort(handles.begin(), handles.end());
  for (std::uintptr_t handle : handles) workers.push_back(streams_.at(handle));
  for (std::size_t d = 0; d < devices_.size(); ++d) {
    if ((device == kAllDevices || static_cast<DeviceIndex>(d) == device) &&
        devices_[d]->default_stream) {
      workers.push_back(devices_[d]->default_stream);
    }
  }
  return workers;
}

void SimBackend::DrainDevice(DeviceIndex device) {
  for (auto& worker : WorkersOn(device)) worker->Drain();
}

absl::Status SimBackend::DeviceSynchronize(DeviceIndex device) {
  Count(BackendOp::kDeviceSynchronize);
  GPUALLOC_RETURN_IF_ERROR(CheckDevice(device));
  DrainDevice(device);
  SimulateLatency(options_.cost.synchronize_ns);
  return absl::OkStatus();
}

// --- memory ----------------------------------------------------------------------

absl::StatusOr<void*> SimBackend::AllocateBacked(MemoryKind kind, DeviceIndex device,
                                                 std::size_t bytes) {
  GPUALLOC_RETURN_IF_ERROR(CheckDevice(device));
  if (bytes == 0) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidValue",
                    "zero-byte allocation requested");
  }
  const SimDeviceConfig& config = options_.devices[device];
  const std::size_t unit = kind == MemoryKind::kPinned ? config.alignment : config.granularity;
  const std::optional<std::size_t> reserved = CheckedRoundUp(bytes, unit);
  const std::size_t guard = options_.guard_bytes;
  std::optional<std::size_t> total;
  if (reserved) total = CheckedAdd(*reserved, 2 * guard);
  if (!total) {
    return SimError(absl::StatusCode::kResourceExhausted, "simErrorMemoryAllocation",
                    absl::StrFormat("requested %d bytes: the size overflows", bytes));
  }

  std::lock_guard<std::mutex> lock(mu_);
  DeviceState& state = *devices_[device];
  std::size_t offset = 0;
  const bool uses_device_space = kind == MemoryKind::kDevice || kind == MemoryKind::kAsync;
  if (uses_device_space) {
    std::optional<std::size_t> got = state.space.Allocate(*reserved);
    if (!got) {
      return SimError(
          absl::StatusCode::kResourceExhausted, "simErrorMemoryAllocation",
          absl::StrFormat("out of memory on sim device %d: requested %d bytes, %d free, "
                          "largest contiguous free range %d",
                          device, bytes, state.space.free_bytes(),
                          state.space.largest_free_range()));
    }
    offset = *got;
  } else if (kind == MemoryKind::kPinned &&
             pinned_bytes_total_ + *reserved > options_.pinned_capacity_bytes) {
    return SimError(absl::StatusCode::kResourceExhausted, "simErrorMemoryAllocation",
                    absl::StrFormat("pinned host memory exhausted: requested %d bytes, %d of %d "
                                    "in use",
                                    bytes, pinned_bytes_total_, options_.pinned_capacity_bytes));
  }
  auto* base = static_cast<unsigned char*>(std::aligned_alloc(config.alignment, *total));
  if (base == nullptr) {
    if (uses_device_space) state.space.Release(offset, *reserved);
    return SimError(absl::StatusCode::kResourceExhausted, "simErrorMemoryAllocation",
                    absl::StrFormat("host memory backing %d bytes could not be allocated", bytes));
  }
  unsigned char* user = base + guard;
  std::memset(base, kGuardByte, guard);
  std::memset(user + bytes, kGuardByte, *reserved - bytes + guard);
  SIM_POISON(base, guard);
  SIM_POISON(user + bytes, *reserved - bytes + guard);

  Allocation a{kind, device, bytes, *reserved, offset, base, false, {}};
  switch (kind) {
    case MemoryKind::kDevice:
    case MemoryKind::kAsync:
      state.AddDeviceBytes(*reserved);
      ++state.live_allocations;
      break;
    case MemoryKind::kManaged:
      state.managed_bytes += *reserved;
      ++state.live_allocations;
      a.residency.assign((bytes + options_.managed_page_bytes - 1) / options_.managed_page_bytes,
                         kHostDevice);
      break;
    case MemoryKind::kPinned:
      state.pinned_bytes += *reserved;
      pinned_bytes_total_ += *reserved;
      break;
  }
  allocations_.emplace(reinterpret_cast<std::uintptr_t>(user), std::move(a));
  return static_cast<void*>(user);
}

absl::Status SimBackend::ReleaseLocked(std::map<std::uintptr_t, Allocation>::iterator it) {
  Allocation& a = it->second;
  const std::size_t guard = options_.guard_bytes;
  unsigned char* user = a.base + guard;
  SIM_UNPOISON(a.base, a.reserved + 2 * guard);
  bool intact = true;
  for (std::size_t i = 0; i < guard && intact; ++i) intact = a.base[i] == kGuardByte;
  for (std::size_t i = a.bytes; i < a.reserved + guard && intact; ++i) intact = user[i] == kGuardByte;
  std::free(a.base);

  DeviceState& state = *devices_[a.device];
  switch (a.kind) {
    case MemoryKind::kDevice:
    case MemoryKind::kAsync:
      state.space.Release(a.offset, a.reserved);
      state.device_bytes -= a.reserved;
      --state.live_allocations;
      break;
    case MemoryKind::kManaged:
      state.managed_bytes -= a.reserved;
      --state.live_allocations;
      break;
    case MemoryKind::kPinned:
      state.pinned_bytes -= a.reserved;
      pinned_bytes_total_ -= a.reserved;
      break;
  }
  const std::size_t bytes = a.bytes;
  const std::uintptr_t address = it->first;
  allocations_.erase(it);
  if (!intact) {
    ++guard_violations_;
    return SimError(absl::StatusCode::kDataLoss, "simErrorIllegalAddress",
                    absl::StrFormat("the guard bytes around allocation %#x (%d bytes) were "
                                    "overwritten: a buffer overrun or underrun",
                                    address, bytes));
  }
  return absl::OkStatus();
}

absl::StatusOr<void*> SimBackend::Malloc(DeviceIndex device, std::size_t bytes) {
  Count(BackendOp::kMalloc);
  SimulateLatency(options_.cost.malloc_ns);
  return AllocateBacked(MemoryKind::kDevice, device, bytes);
}

absl::Status SimBackend::Free(DeviceIndex device, void* ptr) {
  Count(BackendOp::kFree);
  SimulateLatency(options_.cost.free_ns);
  GPUALLOC_RETURN_IF_ERROR(CheckDevice(device));
  if (ptr == nullptr) return absl::OkStatus();  // like cudaFree(nullptr)
  // cudaFree synchronises: work still using the memory finishes first, on
  // any device's stream (a peer copy may touch it from another device).
  DrainDevice(kAllDevices);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = allocations_.find(reinterpret_cast<std::uintptr_t>(ptr));
  if (it == allocations_.end()) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidValue",
                    absl::StrFormat("%s is not a live allocation of this backend (never "
                                    "allocated here, already freed, or an interior pointer)",
                                    Hex(ptr)));
  }
  if (it->second.kind == MemoryKind::kPinned) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidValue",
                    absl::StrFormat("%s is pinned host memory: free it with HostFree", Hex(ptr)));
  }
  if (it->second.free_pending) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidValue",
                    absl::StrFormat("%s was already freed with FreeAsync", Hex(ptr)));
  }
  if (it->second.device != device) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidDevice",
                    absl::StrFormat("%s belongs to device %d, not device %d", Hex(ptr),
                                    it->second.device, device));
  }
  return ReleaseLocked(it);
}

absl::StatusOr<void*> SimBackend::MallocAsync(std::size_t bytes, Stream stream) {
  Count(BackendOp::kMallocAsync);
  if (!options_.stream_ordered_alloc) {
    return SimError(absl::StatusCode::kUnimplemented, "simErrorNotSupported",
                    "stream-ordered allocation is switched off in this sim");
  }
  GPUALLOC_RETURN_IF_ERROR(WorkerFor(stream).status());
  SimulateLatency(options_.cost.malloc_ns);
  return AllocateBacked(MemoryKind::kAsync, stream.device, bytes);
}

absl::Status SimBackend::FreeAsync(void* ptr, Stream stream) {
  Count(BackendOp::kFreeAsync);
  if (!options_.stream_ordered_alloc) {
    return SimError(absl::StatusCode::kUnimplemented, "simErrorNotSupported",
                    "stream-ordered allocation is switched off in this sim");
  }
  GPUALLOC_ASSIGN_OR_RETURN(std::shared_ptr<SimStreamWorker> worker, WorkerFor(stream));
  if (ptr == nullptr) return absl::OkStatus();
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = allocations_.find(reinterpret_cast<std::uintptr_t>(ptr));
    if (it == allocations_.end() || it->second.kind == MemoryKind::kPinned ||
        it->second.kind == MemoryKind::kManaged) {
      return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidValue",
                      absl::StrFormat("%s is not a live device allocation of this backend",
                                      Hex(ptr)));
    }
    if (it->second.free_pending) {
      return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidValue",
                      absl::StrFormat("%s was already freed with FreeAsync", Hex(ptr)));
    }
    if (it->second.device != stream.device) {
      return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidDevice",
                      absl::StrFormat("%s belongs to device %d, freed on a stream of device %d",
                                      Hex(ptr), it->second.device, stream.device));
    }
    it->second.free_pending = true;
  }
  // The memory returns to the device only when the stream reaches this point.
  worker->Enqueue([this, key = reinterpret_cast<std::uintptr_t>(ptr)] {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = allocations_.find(key);
    if (it != allocations_.end()) ReleaseLocked(it).IgnoreError();  // counted as a violation
  });
  return absl::OkStatus();
}

absl::StatusOr<void*> SimBackend::HostAlloc(DeviceIndex device, std::size_t bytes) {
  Count(BackendOp::kHostAlloc);
  SimulateLatency(options_.cost.host_alloc_ns);
  return AllocateBacked(MemoryKind::kPinned, device, bytes);
}

absl::Status SimBackend::HostFree(DeviceIndex device, void* ptr) {
  Count(BackendOp::kHostFree);
  SimulateLatency(options_.cost.host_free_ns);
  GPUALLOC_RETURN_IF_ERROR(CheckDevice(device));
  if (ptr == nullptr) return absl::OkStatus();
  DrainDevice(kAllDevices);  // cudaFreeHost synchronises, like cudaFree
  std::lock_guard<std::mutex> lock(mu_);
  auto it = allocations_.find(reinterpret_cast<std::uintptr_t>(ptr));
  if (it == allocations_.end() || it->second.kind != MemoryKind::kPinned) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidValue",
                    absl::StrFormat("%s is not live pinned host memory of this backend (never "
                                    "allocated, already freed, or device memory)",
                                    Hex(ptr)));
  }
  if (it->second.device != device) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidDevice",
                    absl::StrFormat("pinned block %s is owned by device %d, freed for device %d",
                                    Hex(ptr), it->second.device, device));
  }
  return ReleaseLocked(it);
}

absl::StatusOr<void*> SimBackend::MallocManaged(DeviceIndex device, std::size_t bytes) {
  Count(BackendOp::kMallocManaged);
  if (!options_.managed_memory) {
    return SimError(absl::StatusCode::kUnimplemented, "simErrorNotSupported",
                    "managed memory is switched off in this sim");
  }
  SimulateLatency(options_.cost.malloc_ns);
  return AllocateBacked(MemoryKind::kManaged, device, bytes);
}

absl::Status SimBackend::Prefetch(const void* ptr, std::size_t bytes, DeviceIndex destination,
                                  Stream stream) {
  Count(BackendOp::kPrefetch);
  if (destination != kHostDevice) GPUALLOC_RETURN_IF_ERROR(CheckDevice(destination));
  GPUALLOC_ASSIGN_OR_RETURN(std::shared_ptr<SimStreamWorker> worker, WorkerFor(stream));
  std::uintptr_t key = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const auto p = reinterpret_cast<std::uintptr_t>(ptr);
    auto it = allocations_.upper_bound(p);
    if (it != allocations_.begin()) --it;
    if (it == allocations_.end() || it->second.kind != MemoryKind::kManaged || p < it->first ||
        bytes == 0 || p + bytes > it->first + it->second.bytes) {
      return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidValue",
                      absl::StrFormat("[%s, +%d) is not within one managed allocation",
                                      Hex(ptr), bytes));
    }
    key = it->first;
  }
  const std::size_t page = options_.managed_page_bytes;
  worker->Enqueue([this, key, ptr, bytes, destination, page] {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = allocations_.find(key);
    if (it == allocations_.end()) return;
    const std::size_t first = (reinterpret_cast<std::uintptr_t>(ptr) - key) / page;
    const std::size_t last = (reinterpret_cast<std::uintptr_t>(ptr) - key + bytes - 1) / page;
    for (std::size_t i = first; i <= last && i < it->second.residency.size(); ++i) {
      if (it->second.residency[i] != destination) {
        it->second.residency[i] = destination;
        ++devices_[it->second.device]->page_migrations;
      }
    }
  });
  return absl::OkStatus();
}

// --- streams and events ----------------------------------------------------------

absl::StatusOr<std::shared_ptr<SimStreamWorker>> SimBackend::WorkerFor(Stream stream) {
  GPUALLOC_RETURN_IF_ERROR(CheckDevice(stream.device));
  std::lock_guard<std::mutex> lock(mu_);
  if (stream.is_default()) {
    auto& worker = devices_[stream.device]->default_stream;
    if (!worker) worker = std::make_shared<SimStreamWorker>(stream.device, options_.scheduler);
    return worker;
  }
  auto it = streams_.find(stream.handle);
  if (it == streams_.end()) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidResourceHandle",
                    absl::StrFormat("stream %d does not exist (never created or destroyed)",
                                    stream.handle));
  }
  if (it->second->device() != stream.device) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidDevice",
                    absl::StrFormat("stream %d belongs to device %d, not %d", stream.handle,
                                    it->second->device(), stream.device));
  }
  return it->second;
}

absl::StatusOr<Stream> SimBackend::CreateStream(DeviceIndex device) {
  Count(BackendOp::kStreamCreate);
  GPUALLOC_RETURN_IF_ERROR(CheckDevice(device));
  auto worker = std::make_shared<SimStreamWorker>(device, options_.scheduler);
  std::lock_guard<std::mutex> lock(mu_);
  const std::uintptr_t handle = next_handle_++;
  streams_.emplace(handle, std::move(worker));
  return Stream{handle, device};
}

absl::Status SimBackend::DestroyStream(Stream stream) {
  Count(BackendOp::kStreamDestroy);
  if (stream.is_default()) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidResourceHandle",
                    "the default stream cannot be destroyed");
  }
  GPUALLOC_ASSIGN_OR_RETURN(std::shared_ptr<SimStreamWorker> worker, WorkerFor(stream));
  {
    std::lock_guard<std::mutex> lock(mu_);
    streams_.erase(stream.handle);
  }
  worker->Drain();
  return absl::OkStatus();
}

absl::Status SimBackend::SynchronizeStream(Stream stream) {
  Count(BackendOp::kStreamSynchronize);
  GPUALLOC_ASSIGN_OR_RETURN(std::shared_ptr<SimStreamWorker> worker, WorkerFor(stream));
  worker->Drain();
  SimulateLatency(options_.cost.synchronize_ns);
  return absl::OkStatus();
}

absl::Status SimBackend::StreamWaitEvent(Stream stream, Event event) {
  Count(BackendOp::kStreamWaitEvent);
  GPUALLOC_ASSIGN_OR_RETURN(std::shared_ptr<SimStreamWorker> worker, WorkerFor(stream));
  std::shared_ptr<SimStreamWorker> waited;
  std::uint64_t seq = 0;
  GPUALLOC_RETURN_IF_ERROR(RecordedPosition(event, &waited, &seq));
  if (waited && waited != worker) {
    worker->Enqueue([waited, seq] { waited->WaitFor(seq); });
  }
  return absl::OkStatus();
}

absl::Status SimBackend::RecordedPosition(Event event, std::shared_ptr<SimStreamWorker>* worker,
                                          std::uint64_t* seq) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = events_.find(event.handle);
  if (it == events_.end()) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidResourceHandle",
                    absl::StrFormat("event %d does not exist (never created or destroyed)",
                                    event.handle));
  }
  *worker = it->second->worker;
  *seq = it->second->seq;
  return absl::OkStatus();
}

absl::StatusOr<Event> SimBackend::CreateEvent(DeviceIndex device) {
  Count(BackendOp::kEventCreate);
  GPUALLOC_RETURN_IF_ERROR(CheckDevice(device));
  std::lock_guard<std::mutex> lock(mu_);
  const std::uintptr_t handle = next_handle_++;
  events_.emplace(handle, std::make_unique<EventState>(EventState{device, nullptr, 0}));
  return Event{handle, device};
}

absl::Status SimBackend::RecordEvent(Event event, Stream stream) {
  Count(BackendOp::kEventRecord);
  SimulateLatency(options_.cost.event_ns);
  GPUALLOC_ASSIGN_OR_RETURN(std::shared_ptr<SimStreamWorker> worker, WorkerFor(stream));
  std::lock_guard<std::mutex> lock(mu_);
  auto it = events_.find(event.handle);
  if (it == events_.end()) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidResourceHandle",
                    absl::StrFormat("event %d does not exist", event.handle));
  }
  if (it->second->device != stream.device) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidResourceHandle",
                    absl::StrFormat("event of device %d recorded on a stream of device %d",
                                    it->second->device, stream.device));
  }
  it->second->worker = worker;
  it->second->seq = worker->last_enqueued();
  return absl::OkStatus();
}

absl::StatusOr<bool> SimBackend::QueryEvent(Event event) {
  Count(BackendOp::kEventQuery);
  std::shared_ptr<SimStreamWorker> worker;
  std::uint64_t seq = 0;
  GPUALLOC_RETURN_IF_ERROR(RecordedPosition(event, &worker, &seq));
  return worker == nullptr || worker->Reached(seq);
}

absl::Status SimBackend::SynchronizeEvent(Event event) {
  Count(BackendOp::kEventSynchronize);
  std::shared_ptr<SimStreamWorker> worker;
  std::uint64_t seq = 0;
  GPUALLOC_RETURN_IF_ERROR(RecordedPosition(event, &worker, &seq));
  if (worker) worker->WaitFor(seq);
  return absl::OkStatus();
}

absl::Status SimBackend::DestroyEvent(Event event) {
  Count(BackendOp::kEventDestroy);
  std::unique_ptr<EventState> doomed;  // destroyed outside the lock
  std::lock_guard<std::mutex> lock(mu_);
  auto it = events_.find(event.handle);
  if (it == events_.end()) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidResourceHandle",
                    absl::StrFormat("event %d does not exist (never created or destroyed)",
                                    event.handle));
  }
  doomed = std::move(it->second);
  events_.erase(it);
  return absl::OkStatus();
}

// --- copies --------------------------------------------------------------------

SimBackend::Location SimBackend::Locate(const void* ptr, std::size_t bytes,
                                        DeviceIndex* device) const {
  const auto p = reinterpret_cast<std::uintptr_t>(ptr);
  auto it = allocations_.upper_bound(p);
  if (it != allocations_.begin()) {
    --it;
    const Allocation& a = it->second;
    const auto block_begin = reinterpret_cast<std::uintptr_t>(a.base);
    const std::uintptr_t block_end = block_begin + a.reserved + 2 * options_.guard_bytes;
    if (p >= block_begin && p < block_end) {
      if (p < it->first || p + bytes > it->first + a.bytes) return Location::kInvalid;
      *device = a.device;
      switch (a.kind) {
        case MemoryKind::kDevice:
        case MemoryKind::kAsync:
          return Location::kDevice;
        case MemoryKind::kManaged:
          return Location::kManaged;
        case MemoryKind::kPinned:
          return Location::kPinnedHost;
      }
    }
  }
  auto r = reservations_.upper_bound(p);
  if (r != reservations_.begin()) {
    --r;
    if (p >= r->first && p < r->first + r->second.bytes) {
      // The range must be covered by contiguous, accessible mappings.
      auto m = r->second.mappings.upper_bound(p);
      if (m == r->second.mappings.begin()) return Location::kInvalid;
      --m;
      std::uintptr_t covered = m->first;
      for (; m != r->second.mappings.end() && m->first == covered; ++m) {
        if (!m->second.accessible) return Location::kInvalid;
        covered += m->second.bytes;
        if (covered >= p + bytes) break;
      }
      if (covered < p + bytes || m == r->second.mappings.end()) return Location::kInvalid;
      *device = r->second.device;
      return Location::kDevice;
    }
  }
  return Location::kPageableHost;
}

absl::Status SimBackend::CheckCopy(void* dst, const void* src, std::size_t bytes, CopyKind kind,
                                   DeviceIndex* device) const {
  if (dst == nullptr || src == nullptr) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidValue",
                    absl::StrCat(CopyKindName(kind), " copy with a null pointer"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  DeviceIndex dst_device = 0;
  DeviceIndex src_device = 0;
  const Location dst_at = Locate(dst, bytes, &dst_device);
  const Location src_at = Locate(src, bytes, &src_device);
  if (dst_at == Location::kInvalid || src_at == Location::kInvalid) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidValue",
                    absl::StrFormat("%s copy of %d bytes from %s to %s runs outside a live "
                                    "allocation (or into unmapped memory)",
                                    CopyKindName(kind), bytes, Hex(src), Hex(dst)));
  }
  auto on_device = [](Location l) { return l == Location::kDevice || l == Location::kManaged; };
  auto on_host = [](Location l) { return l != Location::kDevice; };
  bool ok = false;
  switch (kind) {
    case CopyKind::kHostToDevice:
      ok = on_device(dst_at) && on_host(src_at);
      *device = dst_device;
      break;
    case CopyKind::kDeviceToHost:
      ok = on_host(dst_at) && on_device(src_at);
      *device = src_device;
      break;
    case CopyKind::kDeviceToDevice:
      ok = on_device(dst_at) && on_device(src_at);
      *device = dst_device;
      break;
  }
  if (!ok) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidMemcpyDirection",
                    absl::StrFormat("%s copy from %s to %s: the pointers are not where the "
                                    "direction says",
                                    CopyKindName(kind), Hex(src), Hex(dst)));
  }
  return absl::OkStatus();
}

absl::Status SimBackend::Memcpy(void* dst, const void* src, std::size_t bytes, CopyKind kind) {
  Count(BackendOp::kMemcpy);
  if (bytes == 0) return absl::OkStatus();
  DeviceIndex device = 0;
  GPUALLOC_RETURN_IF_ERROR(CheckCopy(dst, src, bytes, kind, &device));
  GPUALLOC_ASSIGN_OR_RETURN(std::shared_ptr<SimStreamWorker> worker,
                            WorkerFor(Stream::Default(device)));
  const std::int64_t cost = options_.cost.copy_ns_per_kib * static_cast<std::int64_t>(bytes / 1024);
  worker->WaitFor(worker->Enqueue([=] {
    SimulateLatency(cost);
    std::memmove(dst, src, bytes);
  }));
  return absl::OkStatus();
}

absl::Status SimBackend::MemcpyAsync(void* dst, const void* src, std::size_t bytes,
                                     CopyKind kind, Stream stream) {
  Count(BackendOp::kMemcpyAsync);
  GPUALLOC_ASSIGN_OR_RETURN(std::shared_ptr<SimStreamWorker> worker, WorkerFor(stream));
  if (bytes == 0) return absl::OkStatus();
  DeviceIndex device = 0;
  GPUALLOC_RETURN_IF_ERROR(CheckCopy(dst, src, bytes, kind, &device));
  const std::int64_t cost = options_.cost.copy_ns_per_kib * static_cast<std::int64_t>(bytes / 1024);
  worker->Enqueue([=] {
    SimulateLatency(cost);
    std::memmove(dst, src, bytes);
  });
  return absl::OkStatus();
}

absl::Status SimBackend::CheckMemsetTarget(void* dst, std::size_t bytes,
                                           DeviceIndex* device) const {
  std::lock_guard<std::mutex> lock(mu_);
  const Location at = dst ? Locate(dst, bytes, device) : Location::kInvalid;
  if (at != Location::kDevice && at != Location::kManaged) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidValue",
                    absl::StrFormat("memset of %d bytes at %s: not within device memory", bytes,
                                    Hex(dst)));
  }
  return absl::OkStatus();
}

absl::Status SimBackend::Memset(void* dst, int value, std::size_t bytes) {
  Count(BackendOp::kMemset);
  if (bytes == 0) return absl::OkStatus();
  DeviceIndex device = 0;
  GPUALLOC_RETURN_IF_ERROR(CheckMemsetTarget(dst, bytes, &device));
  GPUALLOC_ASSIGN_OR_RETURN(std::shared_ptr<SimStreamWorker> worker,
                            WorkerFor(Stream::Default(device)));
  worker->WaitFor(worker->Enqueue([=] { std::memset(dst, value, bytes); }));
  return absl::OkStatus();
}

absl::Status SimBackend::MemsetAsync(void* dst, int value, std::size_t bytes, Stream stream) {
  Count(BackendOp::kMemsetAsync);
  GPUALLOC_ASSIGN_OR_RETURN(std::shared_ptr<SimStreamWorker> worker, WorkerFor(stream));
  if (bytes == 0) return absl::OkStatus();
  DeviceIndex device = 0;
  GPUALLOC_RETURN_IF_ERROR(CheckMemsetTarget(dst, bytes, &device));
  worker->Enqueue([=] { std::memset(dst, value, bytes); });
  return absl::OkStatus();
}

// --- virtual memory ------------------------------------------------------------------

namespace {
absl::Status VmNotSupported() {
  return SimError(absl::StatusCode::kUnimplemented, "simErrorNotSupported",
                  "virtual memory is switched off in this sim");
}
}  // namespace

void SimBackend::DestroyChunkLocked(ChunkMap::iterator it) {
  Chunk& chunk = *it->second;
  close(chunk.fd);
  DeviceState& state = *devices_[chunk.device];
  state.space.Release(chunk.offset, chunk.bytes);
  state.device_bytes -= chunk.bytes;
  state.vm_physical_bytes -= chunk.bytes;
  chunks_.erase(it);
}

absl::StatusOr<std::uintptr_t> SimBackend::VmReserve(DeviceIndex device, std::size_t bytes) {
  Count(BackendOp::kVmReserve);
  if (!options_.virtual_memory) return VmNotSupported();
  GPUALLOC_RETURN_IF_ERROR(CheckDevice(device));
  const std::size_t gran = options_.devices[device].vm_granularity;
  if (bytes == 0 || bytes % gran != 0) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidValue",
                    absl::StrFormat("VM reservation of %d bytes is not a positive multiple of "
                                    "the granularity %d",
                                    bytes, gran));
  }
  void* base = mmap(nullptr, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) {
    return SimError(absl::StatusCode::kResourceExhausted, "simErrorMemoryAllocation",
                    absl::StrFormat("could not reserve %d bytes of address space: %s", bytes,
                                    std::strerror(errno)));
  }
  std::lock_guard<std::mutex> lock(mu_);
  reservations_.emplace(reinterpret_cast<std::uintptr_t>(base), Reservation{device, bytes, {}});
  devices_[device]->vm_reserved_bytes += bytes;
  return reinterpret_cast<std::uintptr_t>(base);
}

absl::Status SimBackend::VmRelease(std::uintptr_t address, std::size_t bytes) {
  Count(BackendOp::kVmRelease);
  if (!options_.virtual_memory) return VmNotSupported();
  std::lock_guard<std::mutex> lock(mu_);
  auto it = reservations_.find(address);
  if (it == reservations_.end() || it->second.bytes != bytes) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidValue",
                    absl::StrFormat("[%#x, +%d) is not a VM reservation of this backend", address,
                                    bytes));
  }
  if (!it->second.mappings.empty()) {
    return SimError(absl::StatusCode::kFailedPrecondition, "simErrorInvalidValue",
                    absl::StrFormat("VM reservation %#x still has %d mapped ranges", address,
                                    it->second.mappings.size()));
  }
  munmap(reinterpret_cast<void*>(address), bytes);
  devices_[it->second.device]->vm_reserved_bytes -= bytes;
  reservations_.erase(it);
  return absl::OkStatus();
}

absl::StatusOr<PhysicalChunk> SimBackend::VmCreate(DeviceIndex device, std::size_t bytes) {
  Count(BackendOp::kVmCreate);
  if (!options_.virtual_memory) return VmNotSupported();
  GPUALLOC_RETURN_IF_ERROR(CheckDevice(device));
  SimulateLatency(options_.cost.malloc_ns);
  const std::size_t gran = options_.devices[device].vm_granularity;
  if (bytes == 0 || bytes % gran != 0) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidValue",
                    absl::StrFormat("physical chunk of %d bytes is not a positive multiple of "
                                    "the granularity %d",
                                    bytes, gran));
  }
  std::lock_guard<std::mutex> lock(mu_);
  DeviceState& state = *devices_[device];
  std::optional<std::size_t> offset = state.space.Allocate(bytes);
  if (!offset) {
    return SimError(absl::StatusCode::kResourceExhausted, "simErrorMemoryAllocation",
                    absl::StrFormat("out of memory on sim device %d: physical chunk of %d bytes, "
                                    "%d free, largest contiguous free range %d",
                                    device, bytes, state.space.free_bytes(),
                                    state.space.largest_free_range()));
  }
  const int fd = memfd_create("gpualloc-sim-chunk", MFD_CLOEXEC);
  if (fd < 0 || ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    const int err = errno;
    if (fd >= 0) close(fd);
    state.space.Release(*offset, bytes);
    return SimError(absl::StatusCode::kResourceExhausted, "simErrorMemoryAllocation",
                    absl::StrFormat("could not back a %d-byte physical chunk: %s", bytes,
                                    std::strerror(err)));
  }
  const std::uintptr_t handle = next_handle_++;
  chunks_.emplace(handle, std::make_unique<Chunk>(Chunk{device, bytes, *offset, fd}));
  state.AddDeviceBytes(bytes);
  state.vm_physical_bytes += bytes;
  return PhysicalChunk{handle, bytes, device};
}

absl::Status SimBackend::VmReleasePhysical(PhysicalChunk chunk) {
  Count(BackendOp::kVmReleasePhysical);
  if (!options_.virtual_memory) return VmNotSupported();
  std::lock_guard<std::mutex> lock(mu_);
  auto it = chunks_.find(chunk.handle);
  if (it == chunks_.end() || it->second->released) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidValue",
                    absl::StrFormat("physical chunk %d does not exist or was already released",
                                    chunk.handle));
  }
  it->second->released = true;
  if (it->second->map_count == 0) DestroyChunkLocked(it);
  return absl::OkStatus();
}

absl::Status SimBackend::VmMap(std::uintptr_t address, PhysicalChunk chunk) {
  Count(BackendOp::kVmMap);
  if (!options_.virtual_memory) return VmNotSupported();
  std::lock_guard<std::mutex> lock(mu_);
  auto c = chunks_.find(chunk.handle);
  if (c == chunks_.end() || c->second->released) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidValue",
                    absl::StrFormat("physical chunk %d does not exist", chunk.handle));
  }
  const std::size_t bytes = c->second->bytes;
  auto r = reservations_.upper_bound(address);
  if (r == reservations_.begin() ||
      (--r, address < r->first || address + bytes > r->first + r->second.bytes)) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidValue",
                    absl::StrFormat("[%#x, +%d) is not inside a VM reservation", address, bytes));
  }
  auto& mappings = r->second.mappings;
  auto next = mappings.lower_bound(address);
  const bool overlaps_next = next != mappings.end() && next->first < address + bytes;
  const bool overlaps_prev = next != mappings.begin() &&
                             std::prev(next)->first + std::prev(next)->second.bytes > address;
  if (overlaps_next || overlaps_prev) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorAlreadyMapped",
                    absl::StrFormat("[%#x, +%d) overlaps an existing mapping", address, bytes));
  }
  void* got = mmap(reinterpret_cast<void*>(address), bytes, PROT_NONE, MAP_SHARED | MAP_FIXED,
                   c->second->fd, 0);
  if (got == MAP_FAILED) {
    return SimError(absl::StatusCode::kInternal, "simErrorUnknown",
                    absl::StrFormat("mmap of a physical chunk failed: %s", std::strerror(errno)));
  }
  mappings.emplace(address, Reservation::Mapping{bytes, chunk.handle, false});
  ++c->second->map_count;
  return absl::OkStatus();
}

absl::Status SimBackend::VmSetAccess(std::uintptr_t address, std::size_t bytes,
                                     DeviceIndex device) {
  Count(BackendOp::kVmSetAccess);
  if (!options_.virtual_memory) return VmNotSupported();
  GPUALLOC_RETURN_IF_ERROR(CheckDevice(device));
  std::lock_guard<std::mutex> lock(mu_);
  auto r = reservations_.upper_bound(address);
  if (r == reservations_.begin()) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidValue",
                    absl::StrFormat("%#x is not inside a VM reservation", address));
  }
  --r;
  auto& mappings = r->second.mappings;
  // The range must start at a mapping and cover whole, contiguous mappings.
  auto m = mappings.find(address);
  std::uintptr_t covered = address;
  std::vector<Reservation::Mapping*> touched;
  for (; m != mappings.end() && m->first == covered && covered < address + bytes; ++m) {
    covered += m->second.bytes;
    touched.push_back(&m->second);
  }
  if (bytes == 0 || covered != address + bytes) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidValue",
                    absl::StrFormat("[%#x, +%d) is not exactly covered by mapped chunks", address,
                                    bytes));
  }
  if (mprotect(reinterpret_cast<void*>(address), bytes, PROT_READ | PROT_WRITE) != 0) {
    return SimError(absl::StatusCode::kInternal, "simErrorUnknown",
                    absl::StrFormat("mprotect failed: %s", std::strerror(errno)));
  }
  for (auto* mapping : touched) mapping->accessible = true;
  return absl::OkStatus();
}

absl::Status SimBackend::VmUnmap(std::uintptr_t address, std::size_t bytes) {
  Count(BackendOp::kVmUnmap);
  if (!options_.virtual_memory) return VmNotSupported();
  std::lock_guard<std::mutex> lock(mu_);
  auto r = reservations_.upper_bound(address);
  if (r == reservations_.begin()) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidValue",
                    absl::StrFormat("%#x is not inside a VM reservation", address));
  }
  --r;
  auto& mappings = r->second.mappings;
  auto first = mappings.find(address);
  auto m = first;
  std::uintptr_t covered = address;
  for (; m != mappings.end() && m->first == covered && covered < address + bytes; ++m) {
    covered += m->second.bytes;
  }
  if (bytes == 0 || covered != address + bytes) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidValue",
                    absl::StrFormat("[%#x, +%d) is not exactly covered by mapped chunks", address,
                                    bytes));
  }
  // Put the reservation back (PROT_NONE, no backing) over the whole range.
  mmap(reinterpret_cast<void*>(address), bytes, PROT_NONE,
       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
  for (auto it = first; it != m;) {
    auto c = chunks_.find(it->second.chunk);
    if (c != chunks_.end() && --c->second->map_count == 0 && c->second->released) {
      DestroyChunkLocked(c);
    }
    it = mappings.erase(it);
  }
  return absl::OkStatus();
}

}  // namespace gpualloc
