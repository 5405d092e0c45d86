#include "allocator/adapters/torch_pluggable_allocator.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include "allocator/context/context.h"

namespace {

using gpualloc::Allocation;
using gpualloc::Context;
using gpualloc::ContextOptions;
using gpualloc::Device;
using gpualloc::DeviceType;
using gpualloc::Runtime;
using gpualloc::Stream;

std::mutex g_error_mu;
std::string g_last_error;  // guarded by g_error_mu
std::atomic<long long> g_errors{0};

void RecordError(const absl::Status& status) {
  g_errors.fetch_add(1);
  std::lock_guard<std::mutex> lock(g_error_mu);
  g_last_error = std::string(status.message());
}

struct TorchAllocators {
  DeviceType type = DeviceType::kCuda;
  Context* context = nullptr;
};

// The library's own context, built once from GPUALLOC_BACKEND (thread-safe
// static initialisation); never destroyed, as PyTorch may free at exit.
const TorchAllocators& Allocators() {
  static const TorchAllocators* allocators = [] {
    auto* a = new TorchAllocators;
    const char* name = std::getenv("GPUALLOC_BACKEND");
    if (name == nullptr || !gpualloc::ParseDeviceType(name, &a->type)) a->type = DeviceType::kCuda;
    ContextOptions options = ContextOptions::Standard();
    options.default_device = Device{a->type, 0};
    a->context = new Context(std::move(options));
    return a;
  }();
  return *allocators;
}

absl::StatusOr<Runtime*> RuntimeFor(int device) {
  const TorchAllocators& a = Allocators();
  return a.context->GetRuntime(Device{a.type, device});
}

// The stream PyTorch passes, as the runtime knows it. A CUDA or HIP stream is
// the runtime's own handle. The sim never created PyTorch's streams, so in sim
// mode each distinct handle gets a sim stream of its own on first sight, kept
// for the process's life (as PyTorch keeps its pooled streams).
absl::StatusOr<Stream> StreamFor(Runtime& runtime, int device, void* stream) {
  if (stream == nullptr) return Stream::Default(device);
  const auto handle = reinterpret_cast<std::uintptr_t>(stream);
  if (Allocators().type != DeviceType::kSim) return Stream{handle, device};
  static std::mutex mu;
  static auto* sim_streams = new std::map<std::pair<std::uintptr_t, int>, Stream>;
  std::lock_guard<std::mutex> lock(mu);
  auto it = sim_streams->find({handle, device});
  if (it != sim_streams->end()) return it->second;
  absl::StatusOr<Stream> created = runtime.backend().CreateStream(device);
  if (!created.ok()) return created.status();
  sim_streams->emplace(std::make_pair(handle, device), *created);
  return *created;
}

}  // namespace

extern "C" void* gpualloc_torch_malloc(size_t size, int device, void* stream) {
  if (size == 0) return nullptr;  // PyTorch never asks for 0; nothing to hand out
  absl::StatusOr<Runtime*> runtime = RuntimeFor(device);
  if (!runtime.ok()) {
    RecordError(runtime.status());
    return nullptr;
  }
  absl::StatusOr<Stream> s = StreamFor(**runtime, device, stream);
  absl::StatusOr<Allocation> a = s.ok() ? (*runtime)->allocator()->Allocate(size, *s)
                                        : absl::StatusOr<Allocation>(s.status());
  if (!a.ok()) {
    RecordError(a.status());
    return nullptr;
  }
  return a->ptr;
}

extern "C" void gpualloc_torch_free(void* ptr, size_t size, int device, void* stream) {
  if (ptr == nullptr) return;
  absl::StatusOr<Runtime*> runtime = RuntimeFor(device);
  absl::Status st = runtime.status();
  if (st.ok()) {
    absl::StatusOr<Stream> s = StreamFor(**runtime, device, stream);
    st = s.ok() ? (*runtime)->allocator()->Deallocate(Allocation{ptr, size, *s}, *s) : s.status();
  }
  if (!st.ok()) {
    RecordError(st);
    std::fprintf(stderr, "gpualloc_torch_free(%p, %zu, device %d): %s\n", ptr, size, device,
                 std::string(st.message()).c_str());
  }
}

extern "C" int gpualloc_torch_empty_cache(void) {
  int failures = 0;
  for (int d = 0; d < Allocators().context->options().max_device_index; ++d) {
    absl::StatusOr<Runtime*> runtime = RuntimeFor(d);
    if (!runtime.ok()) break;  // past the last device
    if (!(*runtime)->allocator()->EmptyCache().ok()) ++failures;
  }
  return failures == 0 ? 0 : -1;
}

extern "C" long long gpualloc_torch_allocated_bytes(int device) {
  absl::StatusOr<Runtime*> runtime = RuntimeFor(device);
  return runtime.ok() ? (*runtime)->allocator()->stats().allocated_bytes.current : -1;
}

extern "C" long long gpualloc_torch_reserved_bytes(int device) {
  absl::StatusOr<Runtime*> runtime = RuntimeFor(device);
  return runtime.ok() ? (*runtime)->allocator()->stats().reserved_bytes.current : -1;
}

extern "C" long long gpualloc_torch_error_count(void) { return g_errors.load(); }

extern "C" size_t gpualloc_torch_last_error(char* buffer, size_t len) {
  std::lock_guard<std::mutex> lock(g_error_mu);
  if (buffer == nullptr || len == 0) return g_last_error.size();
  const size_t n = std::min(len - 1, g_last_error.size());
  std::memcpy(buffer, g_last_error.data(), n);
  buffer[n] = '\0';
  return n;
}
