// Context: the per-process (or per-test) registry of device runtimes and the
// per-thread current device. It replaces a global singleton with an object
// components receive explicitly; DefaultContext() is a thin convenience.
//
//   Context ctx(ContextOptions::SimOnly(sim_backend));
//   ScopedDevice on(ctx, {DeviceType::kSim, 1});   // this thread only
//   absl::StatusOr<Runtime*> rt = ctx.CurrentRuntime();
//
// Thread safety: every method may be called from any thread.
//  - GetRuntime creates each device's Runtime exactly once, however many
//    threads ask at the same moment (no check-then-create race); creation of
//    different devices proceeds in parallel. A creation that fails or throws
//    leaves no entry, and a later call retries.
//  - The current device is per thread and per context: SetDevice in one
//    thread never changes what another thread sees.
//  - Runtimes live as long as the Context; pointers to them stay valid.
#ifndef GPUALLOC_ALLOCATOR_CONTEXT_CONTEXT_H_
#define GPUALLOC_ALLOCATOR_CONTEXT_CONTEXT_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "absl/hash/hash.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "allocator/backend/backend.h"
#include "allocator/common/mutex.h"
#include "allocator/context/device.h"
#include "allocator/context/runtime.h"

namespace gpualloc {

// Supplies the backend for a device type, once, when a runtime of that type
// is first needed. May fail (no driver) or throw; both become a Status.
using BackendProvider = std::function<absl::StatusOr<std::shared_ptr<Backend>>()>;

struct ContextOptions {
  // One provider per device type the context may use; a type without one is
  // rejected with a clear error.
  std::array<BackendProvider, kDeviceTypeCount> backends;
  // The device a thread starts on.
  Device default_device{DeviceType::kSim, 0};
  // Limits: more runtimes than this, or a device index at or past the bound,
  // is refused with ResourceExhausted / InvalidArgument.
  int max_runtimes = 64;
  int max_device_index = 64;
  // Options of every runtime's caching allocator.
  CachingOptions caching;
  // Allocations through Runtime::resource() (and gpualloc::Allocate) are
  // tracked (allocator/observe/tracking_adaptor.h); with leak_report_at_exit
  // whatever is still live when the context is destroyed, or when the
  // process exits if that comes first, is reported on stderr.
  bool track_allocations = false;
  bool leak_report_at_exit = false;

  // A context whose sim devices are served by `sim`.
  static ContextOptions SimOnly(std::shared_ptr<Backend> sim);
  // Sim (2 devices of 1 GiB) plus the real CUDA and HIP backends.
  static ContextOptions Standard();
};

class Context {
 public:
  explicit Context(ContextOptions options);
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  // The runtime for `device`, created on first use. Errors: InvalidArgument
  // (index out of range, no provider for the type), ResourceExhausted
  // (max_runtimes reached), or the backend's own error (no such device).
  absl::StatusOr<Runtime*> GetRuntime(Device device);
  // The runtime for `device` if it exists already; null otherwise. Creates
  // nothing, so it never touches a runtime the process has not used.
  Runtime* FindRuntime(Device device) const;

  // Makes `device` current for the calling thread. Validates it (creating its
  // runtime); on failure the thread's device is unchanged.
  absl::Status SetDevice(Device device);
  // The calling thread's current device (default_device if never set).
  Device CurrentDevice() const;
  absl::StatusOr<Runtime*> CurrentRuntime() { return GetRuntime(CurrentDevice()); }

  int runtime_count() const { return runtime_count_.load(std::memory_order_acquire); }
  const ContextOptions& options() const { return options_; }

 private:
  struct Slot {
    Mutex create_mu;               // serialises creation of this device
    std::atomic<Runtime*> ready{nullptr};
    std::unique_ptr<Runtime> runtime ABSL_GUARDED_BY(create_mu);   // written under create_mu
    // Declared after the runtime, so destroyed first: the report sees the
    // tracker still alive, then the runtime releases its memory.
    std::unique_ptr<LeakReportAtExit> leak_report ABSL_GUARDED_BY(create_mu);
  };
  absl::StatusOr<std::shared_ptr<Backend>> BackendFor(DeviceType type)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ContextOptions options_;
  const std::uint64_t id_;
  mutable Mutex mu_;  // guards slots_ and backends_
  // Node-based: an insert that throws changes nothing (Abseil's flat tables
  // are left corrupt by one).
  std::unordered_map<Device, std::shared_ptr<Slot>, absl::Hash<Device>> slots_
      ABSL_GUARDED_BY(mu_);
  std::array<std::shared_ptr<Backend>, kDeviceTypeCount> backends_ ABSL_GUARDED_BY(mu_);
  std::atomic<int> runtime_count_{0};
};

// Sets the calling thread's device for a scope and restores the previous one
// on exit, including exit by exception.
class ScopedDevice {
 public:
  ScopedDevice(Context& context, Device device);
  ~ScopedDevice();
  ScopedDevice(const ScopedDevice&) = delete;
  ScopedDevice& operator=(const ScopedDevice&) = delete;
  // Whether the switch happened; if not, the device is unchanged.
  const absl::Status& status() const { return status_; }

 private:
  Context& context_;
  Device previous_;
  absl::Status status_;
};

// The process-wide default context (ContextOptions::Standard() unless
// ConfigureDefaultContext ran first). Created on first use, thread-safely;
// never destroyed, so code running during static destruction can still use
// it (no use-after-destruction at exit).
Context& DefaultContext();
// Replaces the options the default context will be created with.
// FailedPrecondition if it already exists.
absl::Status ConfigureDefaultContext(ContextOptions options);

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_CONTEXT_CONTEXT_H_
