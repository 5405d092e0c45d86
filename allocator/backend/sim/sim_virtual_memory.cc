// Virtual memory of the simulated device: reservations are PROT_NONE
// mappings, physical chunks memfd objects mapped with MAP_FIXED.
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "allocator/backend/sim/sim_internal.h"
#include "allocator/common/status_macros.h"

namespace gpualloc {

using sim_internal::Hex;
using sim_internal::SimError;
using sim_internal::SimulateLatency;

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
  std::unique_lock<std::shared_mutex> exec(exec_mu_);
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
  if (checker_) {
    checker_->Release(StreamOrderChecker::kHost, address, bytes,
                      AllocationRef{address, bytes, "virtual"}, "vm_release");
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
  if (checker_) checker_->Forget(address, bytes);  // fresh physical memory
  ++c->second->map_count;
  return absl::OkStatus();
}

absl::StatusOr<SimBackend::CoveredRange> SimBackend::CoveredMappingsLocked(std::uintptr_t address,
                                                                         std::size_t bytes) {
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
  return CoveredRange{r, first, m};
}

absl::Status SimBackend::VmSetAccess(std::uintptr_t address, std::size_t bytes,
                                     DeviceIndex device) {
  Count(BackendOp::kVmSetAccess);
  if (!options_.virtual_memory) return VmNotSupported();
  GPUALLOC_RETURN_IF_ERROR(CheckDevice(device));
  std::lock_guard<std::mutex> lock(mu_);
  GPUALLOC_ASSIGN_OR_RETURN(CoveredRange range, CoveredMappingsLocked(address, bytes));
  if (mprotect(reinterpret_cast<void*>(address), bytes, PROT_READ | PROT_WRITE) != 0) {
    return SimError(absl::StatusCode::kInternal, "simErrorUnknown",
                    absl::StrFormat("mprotect failed: %s", std::strerror(errno)));
  }
  for (auto m = range.first; m != range.end; ++m) m->second.accessible = true;
  return absl::OkStatus();
}

absl::Status SimBackend::VmUnmap(std::uintptr_t address, std::size_t bytes) {
  Count(BackendOp::kVmUnmap);
  if (!options_.virtual_memory) return VmNotSupported();
  std::unique_lock<std::shared_mutex> exec(exec_mu_);  // no stream work mid-access
  std::lock_guard<std::mutex> lock(mu_);
  GPUALLOC_ASSIGN_OR_RETURN(CoveredRange range, CoveredMappingsLocked(address, bytes));
  auto r = range.reservation;
  auto& mappings = r->second.mappings;
  // Unlike cudaFree, unmapping does not wait for the device: every access to
  // the range must already be ordered before the host's call.
  if (checker_) {
    checker_->Release(StreamOrderChecker::kHost, address, bytes,
                      AllocationRef{r->first, r->second.bytes, "virtual"}, "vm_unmap");
  }
  // Put the reservation back (PROT_NONE, no backing) over the whole range.
  mmap(reinterpret_cast<void*>(address), bytes, PROT_NONE,
       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
  for (auto it = range.first; it != range.end;) {
    auto c = chunks_.find(it->second.chunk);
    if (c != chunks_.end() && --c->second->map_count == 0 && c->second->released) {
      DestroyChunkLocked(c);
    }
    it = mappings.erase(it);
  }
  return absl::OkStatus();
}

}  // namespace gpualloc
