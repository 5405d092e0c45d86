// Internal to the sim: the state behind SimBackend's private names, shared by
// its source files (one per concept: memory and copies, streams and events,
// virtual memory, accounting). Not part of the public API.
#ifndef GPUALLOC_ALLOCATOR_BACKEND_SIM_SIM_INTERNAL_H_
#define GPUALLOC_ALLOCATOR_BACKEND_SIM_SIM_INTERNAL_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "allocator/backend/sim/sim_backend.h"

namespace gpualloc {
namespace sim_internal {

// Simulated latency: spins for short waits (sleep is too coarse), sleeps for
// long ones.
void SimulateLatency(std::int64_t ns);

inline absl::Status SimError(absl::StatusCode code, absl::string_view error_name,
                             absl::string_view message) {
  return absl::Status(code, absl::StrCat(error_name, ": ", message));
}

inline std::string Hex(const void* p) { return absl::StrFormat("%p", p); }

}  // namespace sim_internal

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
  VectorClock clock;  // the recording stream's clock (stream-order checker)
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

struct SimBackend::CoveredRange {
  std::map<std::uintptr_t, Reservation>::iterator reservation;
  std::map<std::uintptr_t, Reservation::Mapping>::iterator first;  // [first, end)
  std::map<std::uintptr_t, Reservation::Mapping>::iterator end;
};

struct SimBackend::Chunk {
  DeviceIndex device;
  std::size_t bytes;
  std::size_t offset;
  int fd;
  int map_count = 0;
  bool released = false;
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_BACKEND_SIM_SIM_INTERNAL_H_
