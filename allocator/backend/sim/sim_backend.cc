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
#include "allocator/backend/sim/sim_internal.h"
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

}  // namespace

namespace sim_internal {

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

}  // namespace sim_internal

using sim_internal::Hex;
using sim_internal::SimError;
using sim_internal::SimulateLatency;

SimBackend::SimBackend(SimOptions options)
    : options_(std::move(options)),
      instance_id_(g_next_instance_id.fetch_add(1)),
      checker_(options_.check_stream_order
                   ? std::make_unique<StreamOrderChecker>(StreamOrderChecker::Options{
                         options_.abort_on_stream_order_violation, 256})
                   : nullptr) {
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
  std::unique_lock<std::shared_mutex> exec(exec_mu_);
  std::lock_guard<std::mutex> lock(mu_);

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
  p.stream_priority_least = c.stream_priority_least;
  p.stream_priority_greatest = c.stream_priority_greatest;
  p.concurrent_managed_access = c.concurrent_managed_access;
  p.pageable_memory_access = c.pageable_memory_access;
  p.host_native_atomics = c.host_native_atomics;
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
  // Fresh memory: nothing that touched these addresses before counts.
  if (checker_) checker_->Forget(reinterpret_cast<std::uintptr_t>(user), bytes);
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
  std::unique_lock<std::shared_mutex> exec(exec_mu_);
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
  if (checker_) {
    checker_->Release(StreamOrderChecker::kHost, it->first, it->second.bytes,
                      AllocationRef{it->first, it->second.bytes,
                                    it->second.kind == MemoryKind::kManaged ? "managed" : "device"},
                      "free");
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
    // The free ends the range's life in the stream's order: every access to
    // it must be ordered before this point of the stream.
    if (checker_) {
      checker_->Release(ActorOf(*worker), it->first, it->second.bytes,
                        AllocationRef{it->first, it->second.bytes, "device"}, "free_async");
    }
  }
  // The memory returns to the device only when the stream reaches this point.
  worker->Enqueue([this, key = reinterpret_cast<std::uintptr_t>(ptr)] {
    std::unique_lock<std::shared_mutex> exec(exec_mu_);
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
  std::unique_lock<std::shared_mutex> exec(exec_mu_);
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
  if (checker_) {
    checker_->Release(StreamOrderChecker::kHost, it->first, it->second.bytes,
                      AllocationRef{it->first, it->second.bytes, "pinned"}, "host_free");
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

// --- copies --------------------------------------------------------------------

SimBackend::Location SimBackend::Locate(const void* ptr, std::size_t bytes,
                                        DeviceIndex* device, AllocationRef* ref) const {
  const auto p = reinterpret_cast<std::uintptr_t>(ptr);
  auto it = allocations_.upper_bound(p);
  // Keyed by the caller's pointer: a pointer into the guard before it belongs
  // to the next block, and is no host memory.
  if (it != allocations_.end() && p >= reinterpret_cast<std::uintptr_t>(it->second.base)) {
    return Location::kInvalid;
  }
  if (it != allocations_.begin()) {
    --it;
    const Allocation& a = it->second;
    const auto block_begin = reinterpret_cast<std::uintptr_t>(a.base);
    const std::uintptr_t block_end = block_begin + a.reserved + 2 * options_.guard_bytes;
    if (p >= block_begin && p < block_end) {
      if (p < it->first || p + bytes > it->first + a.bytes) return Location::kInvalid;
      *device = a.device;
      if (ref != nullptr) {
        *ref = AllocationRef{it->first, a.bytes,
                             a.kind == MemoryKind::kPinned    ? "pinned"
                             : a.kind == MemoryKind::kManaged ? "managed"
                                                              : "device"};
      }
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
      if (ref != nullptr) *ref = AllocationRef{r->first, r->second.bytes, "virtual"};
      return Location::kDevice;
    }
  }
  return Location::kPageableHost;
}

absl::Status SimBackend::CheckCopy(void* dst, const void* src, std::size_t bytes, CopyKind kind,
                                   DeviceIndex* device, std::vector<RangeAccess>* accesses) const {
  if (dst == nullptr || src == nullptr) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidValue",
                    absl::StrCat(CopyKindName(kind), " copy with a null pointer"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  DeviceIndex dst_device = 0;
  DeviceIndex src_device = 0;
  AllocationRef dst_ref, src_ref;
  const Location dst_at = Locate(dst, bytes, &dst_device, &dst_ref);
  const Location src_at = Locate(src, bytes, &src_device, &src_ref);
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
  TrackAccess(src, bytes, AccessMode::kRead, src_at, src_ref, accesses);
  TrackAccess(dst, bytes, AccessMode::kWrite, dst_at, dst_ref, accesses);
  return absl::OkStatus();
}

void SimBackend::TrackAccess(const void* ptr, std::size_t bytes, AccessMode mode, Location at,
                             const AllocationRef& ref, std::vector<RangeAccess>* out) {
  if (at == Location::kPageableHost || at == Location::kInvalid) return;
  out->push_back(RangeAccess{reinterpret_cast<std::uintptr_t>(ptr), bytes, mode, ref});
}

std::uint64_t SimBackend::EnqueueChecked(SimStreamWorker& worker,
                                         std::vector<RangeAccess> accesses, const char* what,
                                         std::function<void()> body) {
  const int actor = ActorOf(worker);
  const std::uint64_t op = checker_ ? checker_->Enqueue(actor, accesses, what) : 0;
  return worker.Enqueue([this, actor, op, what, accesses = std::move(accesses),
                         body = std::move(body)] {
    // Nothing is unmapped or freed while this runs; what is already gone is
    // reported and skipped, as a GPU would fault instead of corrupting.
    std::shared_lock<std::shared_mutex> exec(exec_mu_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const RangeAccess& a : accesses) {
        DeviceIndex device = 0;
        const Location at = Locate(reinterpret_cast<const void*>(a.begin), a.bytes, &device);
        if (at == Location::kPageableHost || at == Location::kInvalid) {
          if (checker_) checker_->ReportUnmapped(actor, op, a, what);
          return;
        }
      }
    }
    body();
  });
}

void SimBackend::HostWaited(const std::vector<std::shared_ptr<SimStreamWorker>>& workers) {
  if (!checker_) return;
  std::vector<int> actors;
  actors.reserve(workers.size());
  for (const auto& worker : workers) actors.push_back(ActorOf(*worker));
  checker_->HostJoinActors(actors);
}

absl::Status SimBackend::CheckStreamOrder() const {
  if (!checker_ || checker_->stats().violations == 0) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("the sim's stream-order checker found ", checker_->stats().violations,
                   " violation(s):\n", checker_->Report()));
}

absl::Status SimBackend::Memcpy(void* dst, const void* src, std::size_t bytes, CopyKind kind) {
  Count(BackendOp::kMemcpy);
  if (bytes == 0) return absl::OkStatus();
  DeviceIndex device = 0;
  std::vector<RangeAccess> accesses;
  GPUALLOC_RETURN_IF_ERROR(CheckCopy(dst, src, bytes, kind, &device, &accesses));
  GPUALLOC_ASSIGN_OR_RETURN(std::shared_ptr<SimStreamWorker> worker,
                            WorkerFor(Stream::Default(device)));
  const std::int64_t cost = options_.cost.copy_ns_per_kib * static_cast<std::int64_t>(bytes / 1024);
  // On the device's default stream, and the host waits for it.
  worker->WaitFor(EnqueueChecked(*worker, std::move(accesses), "memcpy", [=] {
    SimulateLatency(cost);
    std::memmove(dst, src, bytes);
  }));
  HostWaited({worker});
  return absl::OkStatus();
}

absl::Status SimBackend::MemcpyAsync(void* dst, const void* src, std::size_t bytes,
                                     CopyKind kind, Stream stream) {
  Count(BackendOp::kMemcpyAsync);
  GPUALLOC_ASSIGN_OR_RETURN(std::shared_ptr<SimStreamWorker> worker, WorkerFor(stream));
  if (bytes == 0) return absl::OkStatus();
  DeviceIndex device = 0;
  std::vector<RangeAccess> accesses;
  GPUALLOC_RETURN_IF_ERROR(CheckCopy(dst, src, bytes, kind, &device, &accesses));
  const std::int64_t cost = options_.cost.copy_ns_per_kib * static_cast<std::int64_t>(bytes / 1024);
  EnqueueChecked(*worker, std::move(accesses), "memcpy_async", [=] {
    SimulateLatency(cost);
    std::memmove(dst, src, bytes);
  });
  return absl::OkStatus();
}

absl::Status SimBackend::CheckMemsetTarget(void* dst, std::size_t bytes, DeviceIndex* device,
                                           std::vector<RangeAccess>* accesses) const {
  std::lock_guard<std::mutex> lock(mu_);
  AllocationRef ref;
  const Location at = dst ? Locate(dst, bytes, device, &ref) : Location::kInvalid;
  if (at != Location::kDevice && at != Location::kManaged) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidValue",
                    absl::StrFormat("memset of %d bytes at %s: not within device memory", bytes,
                                    Hex(dst)));
  }
  TrackAccess(dst, bytes, AccessMode::kWrite, at, ref, accesses);
  return absl::OkStatus();
}

absl::Status SimBackend::Memset(void* dst, int value, std::size_t bytes) {
  Count(BackendOp::kMemset);
  if (bytes == 0) return absl::OkStatus();
  DeviceIndex device = 0;
  std::vector<RangeAccess> accesses;
  GPUALLOC_RETURN_IF_ERROR(CheckMemsetTarget(dst, bytes, &device, &accesses));
  GPUALLOC_ASSIGN_OR_RETURN(std::shared_ptr<SimStreamWorker> worker,
                            WorkerFor(Stream::Default(device)));
  worker->WaitFor(EnqueueChecked(*worker, std::move(accesses), "memset",
                                 [=] { std::memset(dst, value, bytes); }));
  HostWaited({worker});
  return absl::OkStatus();
}

absl::Status SimBackend::MemsetAsync(void* dst, int value, std::size_t bytes, Stream stream) {
  Count(BackendOp::kMemsetAsync);
  GPUALLOC_ASSIGN_OR_RETURN(std::shared_ptr<SimStreamWorker> worker, WorkerFor(stream));
  if (bytes == 0) return absl::OkStatus();
  DeviceIndex device = 0;
  std::vector<RangeAccess> accesses;
  GPUALLOC_RETURN_IF_ERROR(CheckMemsetTarget(dst, bytes, &device, &accesses));
  EnqueueChecked(*worker, std::move(accesses), "memset_async",
                 [=] { std::memset(dst, value, bytes); });
  return absl::OkStatus();
}

absl::Status SimBackend::LaunchKernel(Stream stream, std::vector<KernelArg> args,
                                      std::int64_t duration_ns, const char* name) {
  GPUALLOC_ASSIGN_OR_RETURN(std::shared_ptr<SimStreamWorker> worker, WorkerFor(stream));
  std::vector<RangeAccess> accesses;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const KernelArg& arg : args) {
      DeviceIndex device = 0;
      AllocationRef ref;
      const Location at =
          arg.ptr != nullptr && arg.bytes > 0 ? Locate(arg.ptr, arg.bytes, &device, &ref)
                                              : Location::kInvalid;
      if (at == Location::kInvalid || at == Location::kPageableHost) {
        return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidValue",
                        absl::StrFormat("kernel %s: argument [%s, +%d) is not within device, "
                                        "managed or pinned memory",
                                        name, Hex(arg.ptr), arg.bytes));
      }
      // Another device's memory: only through peer access (a real device
      // faults on it).
      if (at == Location::kDevice && device != stream.device &&
          !peer_enabled_.contains({stream.device, device})) {
        return SimError(absl::StatusCode::kInvalidArgument, "simErrorPeerAccessNotEnabled",
                        absl::StrFormat("kernel %s on device %d: argument [%s, +%d) is memory "
                                        "of device %d, and peer access is not enabled",
                                        name, stream.device, Hex(arg.ptr), arg.bytes, device));
      }
      TrackAccess(arg.ptr, arg.bytes, arg.mode, at, ref, &accesses);
    }
  }
  EnqueueChecked(*worker, std::move(accesses), name, [args = std::move(args), duration_ns] {
    SimulateLatency(duration_ns);
    for (const KernelArg& arg : args) {
      auto* p = static_cast<volatile unsigned char*>(arg.ptr);
      if (arg.mode == AccessMode::kWrite) {
        std::memset(arg.ptr, arg.fill, arg.bytes);
      } else {
        unsigned char sum = 0;  // a real read, so ASan sees the bytes touched
        for (std::size_t i = 0; i < arg.bytes; i += 64) sum = static_cast<unsigned char>(sum + p[i]);
        (void)sum;
      }
    }
  });
  return absl::OkStatus();
}

absl::StatusOr<bool> SimBackend::CanAccessPeer(DeviceIndex device, DeviceIndex peer) {
  GPUALLOC_RETURN_IF_ERROR(CheckDevice(device));
  GPUALLOC_RETURN_IF_ERROR(CheckDevice(peer));
  if (device == peer) return false;
  if (!options_.peer_links) return true;
  for (const auto& [a, b] : *options_.peer_links) {
    if ((a == device && b == peer) || (a == peer && b == device)) return true;
  }
  return false;
}

absl::Status SimBackend::EnablePeerAccess(DeviceIndex device, DeviceIndex peer) {
  Count(BackendOp::kEnablePeerAccess);
  if (device == peer) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidDevice",
                    absl::StrFormat("device %d is not its own peer", device));
  }
  GPUALLOC_ASSIGN_OR_RETURN(bool linked, CanAccessPeer(device, peer));
  if (!linked) {
    return SimError(absl::StatusCode::kFailedPrecondition, "simErrorPeerAccessUnsupported",
                    absl::StrFormat("device %d has no link to device %d", device, peer));
  }
  std::lock_guard<std::mutex> lock(mu_);
  peer_enabled_.insert({device, peer});
  return absl::OkStatus();
}

absl::Status SimBackend::MemcpyPeerAsync(void* dst, DeviceIndex dst_device, const void* src,
                                         DeviceIndex src_device, std::size_t bytes,
                                         Stream stream) {
  Count(BackendOp::kMemcpyPeerAsync);
  GPUALLOC_ASSIGN_OR_RETURN(std::shared_ptr<SimStreamWorker> worker, WorkerFor(stream));
  if (bytes == 0) return absl::OkStatus();
  if (dst == nullptr || src == nullptr) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidValue",
                    "peer copy with a null pointer");
  }
  std::vector<RangeAccess> accesses;
  {
    std::lock_guard<std::mutex> lock(mu_);
    DeviceIndex dst_at_device = 0, src_at_device = 0;
    AllocationRef dst_ref, src_ref;
    const Location dst_at = Locate(dst, bytes, &dst_at_device, &dst_ref);
    const Location src_at = Locate(src, bytes, &src_at_device, &src_ref);
    if (dst_at != Location::kDevice || src_at != Location::kDevice ||
        dst_at_device != dst_device || src_at_device != src_device) {
      return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidValue",
                      absl::StrFormat("peer copy of %d bytes from %s (device %d) to %s (device "
                                      "%d): the pointers are not device memory of those devices",
                                      bytes, Hex(src), src_device, Hex(dst), dst_device));
    }
    TrackAccess(src, bytes, AccessMode::kRead, src_at, src_ref, &accesses);
    TrackAccess(dst, bytes, AccessMode::kWrite, dst_at, dst_ref, &accesses);
  }
  const std::int64_t cost = options_.cost.copy_ns_per_kib * static_cast<std::int64_t>(bytes / 1024);
  EnqueueChecked(*worker, std::move(accesses), "memcpy_peer_async", [=] {
    SimulateLatency(cost);
    std::memmove(dst, src, bytes);
  });
  return absl::OkStatus();
}

absl::Status SimBackend::NoteHostAccess(const void* ptr, std::size_t bytes, AccessMode mode) {
  if (!checker_ || ptr == nullptr || bytes == 0) return absl::OkStatus();
  std::vector<RangeAccess> accesses;
  DeviceIndex device = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    AllocationRef ref;
    const Location at = Locate(ptr, bytes, &device, &ref);
    if (at != Location::kPinnedHost && at != Location::kManaged) {
      return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidValue",
                      absl::StrFormat("host access to [%s, +%d): not within pinned or managed "
                                      "memory",
                                      Hex(ptr), bytes));
    }
    TrackAccess(ptr, bytes, mode, at, ref, &accesses);
  }
  checker_->HostAccess(accesses, mode == AccessMode::kWrite ? "host write" : "host read");
  return absl::OkStatus();
}

}  // namespace gpualloc
