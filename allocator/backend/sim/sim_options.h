// Configuration of the simulated GPU: its devices, their limits, and the cost
// model that lets benchmarks and the harness measure backend calls saved.
#ifndef GPUALLOC_ALLOCATOR_BACKEND_SIM_SIM_OPTIONS_H_
#define GPUALLOC_ALLOCATOR_BACKEND_SIM_SIM_OPTIONS_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "allocator/common/cooperative_scheduler.h"

namespace gpualloc {

struct SimDeviceConfig {
  std::string name = "SimGPU";
  // Bytes of "device memory"; Malloc beyond it is out-of-memory.
  std::size_t capacity_bytes = std::size_t{1} << 30;
  // Pointer alignment (cudaMalloc guarantees 256).
  std::size_t alignment = 256;
  // The device's address space is carved in units of this size, so many small
  // mallocs fragment it the way a real device's does.
  std::size_t granularity = 512;
  // Granularity of the virtual-memory API (2 MiB like CUDA's minimum).
  std::size_t vm_granularity = std::size_t{2} << 20;
  // Stream priorities, as a recent NVIDIA GPU reports them (0 down to -5).
  // The sim records them; its streams run side by side whatever they are.
  int stream_priority_least = 0;
  int stream_priority_greatest = -5;
  // What the device reports of host/device visibility: a discrete GPU on
  // Linux by default (managed memory used concurrently; no access to
  // pageable memory; no native atomics over PCIe).
  bool concurrent_managed_access = true;
  bool pageable_memory_access = false;
  bool host_native_atomics = false;
};

// Latency of each kind of call, in nanoseconds. Zero everywhere by default,
// so tests run at bookkeeping speed; benchmarks set realistic values.
struct SimCostModel {
  std::int64_t malloc_ns = 0;
  std::int64_t free_ns = 0;
  std::int64_t host_alloc_ns = 0;
  std::int64_t host_free_ns = 0;
  std::int64_t copy_ns_per_kib = 0;
  std::int64_t synchronize_ns = 0;
  std::int64_t event_ns = 0;

  // Figures in the range a discrete GPU shows for cudaMalloc/cudaFree and a
  // PCIe 4 copy (~16 GB/s), for benchmarks that count calls saved.
  static SimCostModel CudaLike() {
    SimCostModel m;
    m.malloc_ns = 20'000;
    m.free_ns = 10'000;
    m.host_alloc_ns = 50'000;
    m.host_free_ns = 20'000;
    m.copy_ns_per_kib = 64;
    m.synchronize_ns = 5'000;
    m.event_ns = 500;
    return m;
  }
};

struct SimOptions {
  std::vector<SimDeviceConfig> devices = {SimDeviceConfig{}};
  SimCostModel cost;
  // Page-locked host memory available across all devices.
  std::size_t pinned_capacity_bytes = std::size_t{4} << 30;
  // Canary bytes before and after every device and pinned allocation (a
  // multiple of the alignment). Checked at free; poisoned under ASan.
  std::size_t guard_bytes = 256;
  // Managed memory migrates in pages of this size (counted in accounting).
  std::size_t managed_page_bytes = 64 * 1024;
  bool stream_ordered_alloc = true;
  bool managed_memory = true;
  // Peer links: pairs of device indices whose devices can reach each other's
  // memory once peer access is enabled (both ways). Unset: every pair.
  std::optional<std::vector<std::pair<int, int>>> peer_links;
  bool virtual_memory = true;
  // The stream-order checker (stream_order_checker.h): on in every test and
  // in the stress runner; benchmarks may switch it off.
  bool check_stream_order = true;
  // Abort at the first stream-order violation, printing its report.
  bool abort_on_stream_order_violation = false;
  // Deterministic-schedule runs (harness/concurrency): the stream workers
  // become participants of this scheduler. Not owned; must outlive the sim.
  CooperativeScheduler* scheduler = nullptr;

  // `count` identical devices of `capacity_bytes` each.
  static SimOptions WithDevices(int count, std::size_t capacity_bytes) {
    SimOptions o;
    o.devices.assign(count, SimDeviceConfig{});
    for (int i = 0; i < count; ++i) {
      o.devices[i].capacity_bytes = capacity_bytes;
      o.devices[i].name = "SimGPU-" + std::to_string(i);
    }
    return o;
  }
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_BACKEND_SIM_SIM_OPTIONS_H_
