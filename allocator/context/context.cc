#include "allocator/context/context.h"

#include <unordered_map>
#include <utility>

#include "absl/strings/str_format.h"
#include "allocator/backend/cuda/cuda_backend.h"
#include "allocator/backend/hip/hip_backend.h"
#include "allocator/backend/sim/sim_backend.h"
#include "allocator/common/exception_boundary.h"
#include "allocator/common/status_macros.h"

namespace gpualloc {
namespace {

std::atomic<std::uint64_t> g_next_context_id{1};

// Current device per thread, per context (keyed by a never-reused id).
// Node-based: a SetDevice whose insert throws leaves it as it was.
thread_local std::unordered_map<std::uint64_t, Device> tls_device;

}  // namespace

ContextOptions ContextOptions::SimOnly(std::shared_ptr<Backend> sim) {
  ContextOptions o;
  o.backends[static_cast<int>(DeviceType::kSim)] =
      [sim]() -> absl::StatusOr<std::shared_ptr<Backend>> { return sim; };
  return o;
}

ContextOptions ContextOptions::Standard() {
  ContextOptions o;
  o.backends[static_cast<int>(DeviceType::kSim)] =
      []() -> absl::StatusOr<std::shared_ptr<Backend>> {
    return std::make_shared<SimBackend>(SimOptions::WithDevices(2, std::size_t{1} << 30));
  };
  o.backends[static_cast<int>(DeviceType::kCuda)] =
      []() -> absl::StatusOr<std::shared_ptr<Backend>> { return MakeCudaBackend(); };
  o.backends[static_cast<int>(DeviceType::kHip)] =
      []() -> absl::StatusOr<std::shared_ptr<Backend>> { return MakeHipBackend(); };
  return o;
}

Context::Context(ContextOptions options)
    : options_(std::move(options)), id_(g_next_context_id.fetch_add(1)) {}

absl::StatusOr<std::shared_ptr<Backend>> Context::BackendFor(DeviceType type) {
  // Called with mu_ held: the backend is created once per type.
  auto& cached = backends_[static_cast<int>(type)];
  if (cached) return cached;
  const BackendProvider& provider = options_.backends[static_cast<int>(type)];
  if (!provider) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "no backend is configured for device type '%s' in this context", DeviceTypeName(type)));
  }
  GPUALLOC_ASSIGN_OR_RETURN(
      std::shared_ptr<Backend> backend,
      CallAtBoundary(absl::StrCat("creating the ", DeviceTypeName(type), " backend"), provider));
  if (backend == nullptr) {
    return absl::InternalError(
        absl::StrFormat("the %s backend provider returned null", DeviceTypeName(type)));
  }
  cached = std::move(backend);
  return cached;
}

Runtime* Context::FindRuntime(Device device) const {
  MutexLock lock(mu_);
  auto it = slots_.find(device);
  return it == slots_.end() ? nullptr : it->second->ready.load(std::memory_order_acquire);
}

absl::StatusOr<Runtime*> Context::GetRuntime(Device device) {
  if (device.index < 0 || device.index >= options_.max_device_index) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "device %s: index out of range [0, %d)", device.ToString(), options_.max_device_index));
  }
  std::shared_ptr<Slot> slot;
  std::shared_ptr<Backend> backend;
  {
    MutexLock lock(mu_);
    std::shared_ptr<Slot>& entry = slots_[device];
    if (!entry) entry = std::make_shared<Slot>();
    slot = entry;
    if (Runtime* ready = slot->ready.load(std::memory_order_acquire)) return ready;
    absl::StatusOr<std::shared_ptr<Backend>> b = BackendFor(device.type);
    if (!b.ok()) return b.status();
    backend = *std::move(b);
  }
  MutexLock create(slot->create_mu);
  if (Runtime* ready = slot->ready.load(std::memory_order_acquire)) return ready;
  // Reserve a place under the limit before creating; give it back on failure.
  if (runtime_count_.fetch_add(1, std::memory_order_acq_rel) >= options_.max_runtimes) {
    runtime_count_.fetch_sub(1, std::memory_order_acq_rel);
    return absl::ResourceExhaustedError(absl::StrFormat(
        "device %s: the limit of %d runtimes in this context is reached", device.ToString(),
        options_.max_runtimes));
  }
  absl::StatusOr<std::unique_ptr<Runtime>> created = Runtime::Create(
      device, std::move(backend), options_.caching,
      options_.track_allocations || options_.leak_report_at_exit);
  if (!created.ok()) {
    runtime_count_.fetch_sub(1, std::memory_order_acq_rel);
    return created.status();  // no partial entry: the slot stays empty
  }
  if (options_.leak_report_at_exit && (*created)->tracker() != nullptr) {
    slot->leak_report = std::make_unique<LeakReportAtExit>((*created)->tracker());
  }
  slot->runtime = *std::move(created);
  slot->ready.store(slot->runtime.get(), std::memory_order_release);
  return slot->runtime.get();
}

absl::Status Context::SetDevice(Device device) {
  GPUALLOC_RETURN_IF_ERROR(GetRuntime(device).status());
  tls_device[id_] = device;
  return absl::OkStatus();
}

Device Context::CurrentDevice() const {
  auto it = tls_device.find(id_);
  return it == tls_device.end() ? options_.default_device : it->second;
}

ScopedDevice::ScopedDevice(Context& context, Device device)
    : context_(context), previous_(context.CurrentDevice()) {
  status_ = context_.SetDevice(device);
}

ScopedDevice::~ScopedDevice() {
  // Restoring a device that was valid before cannot fail validation; the
  // status is deliberately dropped (destructors never throw or fail loudly).
  if (status_.ok()) context_.SetDevice(previous_).IgnoreError();
}

namespace {

Mutex g_default_mu;
ContextOptions* g_default_options = nullptr;  // guarded by g_default_mu
std::atomic<Context*> g_default_context{nullptr};

}  // namespace

Context& DefaultContext() {
  if (Context* c = g_default_context.load(std::memory_order_acquire)) return *c;
  MutexLock lock(g_default_mu);
  if (Context* c = g_default_context.load(std::memory_order_acquire)) return *c;
  auto context = std::make_unique<Context>(g_default_options ? std::move(*g_default_options)
                                                             : ContextOptions::Standard());
  // Intentionally never destroyed: see the header.
  Context* raw = context.release();
  g_default_context.store(raw, std::memory_order_release);
  return *raw;
}

absl::Status ConfigureDefaultContext(ContextOptions options) {
  MutexLock lock(g_default_mu);
  if (g_default_context.load(std::memory_order_acquire) != nullptr) {
    return absl::FailedPreconditionError(
        "the default context already exists; configure it before its first use");
  }
  static ContextOptions storage;
  storage = std::move(options);
  g_default_options = &storage;
  return absl::OkStatus();
}

}  // namespace gpualloc
