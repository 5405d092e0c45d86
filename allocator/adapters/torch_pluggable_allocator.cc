#include "allocator/adapters/torch_pluggable_allocator.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "allocator/adapters/alloc_conf.h"
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

// Counts `status` and keeps its message; with `call`, also reports it on
// stderr (for calls that cannot return an error).
void RecordError(const absl::Status& status, const std::string& call = "") {
  g_errors.fetch_add(1);
  if (!call.empty()) {
    std::fprintf(stderr, "%s: %s\n", call.c_str(), std::string(status.message()).c_str());
  }
  std::lock_guard<std::mutex> lock(g_error_mu);
  g_last_error = std::string(status.message());
}

// Copies `message` into `buffer` (NUL-terminated, truncated to `len`).
size_t CopyMessage(absl::string_view message, char* buffer, size_t len) {
  if (buffer == nullptr || len == 0) return message.size();
  const size_t n = std::min(len - 1, message.size());
  std::memcpy(buffer, message.data(), n);
  buffer[n] = '\0';
  return n;
}

struct TorchAllocators {
  DeviceType type = DeviceType::kCuda;
  Context* context = nullptr;  // null when the configuration is bad
  absl::Status configuration;  // why there is no context
};

// The library's own context, built once from GPUALLOC_BACKEND and
// GPUALLOC_CONF (thread-safe static initialisation); never destroyed, as
// PyTorch may free at exit. A bad value is an error at first use, reported
// on stderr and by every call after, never a silent fallback to defaults.
const TorchAllocators& Allocators() {
  static const TorchAllocators* allocators = [] {
    auto* a = new TorchAllocators;
    const char* name = std::getenv("GPUALLOC_BACKEND");
    if (name != nullptr && *name != '\0' && !gpualloc::ParseDeviceType(name, &a->type)) {
      a->configuration = absl::InvalidArgumentError(
          absl::StrCat("GPUALLOC_BACKEND='", name, "': expected cuda, hip or sim"));
    }
    ContextOptions options = ContextOptions::Standard();
    options.default_device = Device{a->type, 0};
    if (a->configuration.ok()) {
      const char* conf = std::getenv("GPUALLOC_CONF");
      absl::StatusOr<gpualloc::CachingOptions> caching =
          gpualloc::ApplyAllocConf(conf != nullptr ? conf : "", options.caching);
      if (caching.ok()) {
        options.caching = *caching;
      } else {
        a->configuration = caching.status();
      }
    }
    if (a->configuration.ok()) {
      a->context = new Context(std::move(options));
    } else {
      std::fprintf(stderr, "libgpualloc_torch: %s\n",
                   std::string(a->configuration.message()).c_str());
    }
    return a;
  }();
  return *allocators;
}

absl::StatusOr<Runtime*> RuntimeFor(int device) {
  const TorchAllocators& a = Allocators();
  if (a.context == nullptr) return a.configuration;
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

// The runtimes already in use, with their device index: calls that act on
// every device must not create contexts. The configuration error if bad.
absl::StatusOr<std::vector<std::pair<int, Runtime*>>> RuntimesInUse() {
  const TorchAllocators& a = Allocators();
  if (a.context == nullptr) return a.configuration;
  std::vector<std::pair<int, Runtime*>> in_use;
  for (int d = 0; d < a.context->options().max_device_index; ++d) {
    if (Runtime* runtime = a.context->FindRuntime(Device{a.type, d})) in_use.emplace_back(d, runtime);
  }
  return in_use;
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
    RecordError(st, absl::StrFormat("gpualloc_torch_free(%p, %d, device %d)", ptr, size, device));
  }
}

extern "C" int gpualloc_torch_empty_cache(void) {
  absl::StatusOr<std::vector<std::pair<int, Runtime*>>> in_use = RuntimesInUse();
  if (!in_use.ok()) {
    RecordError(in_use.status());
    return -1;
  }
  int failures = 0;
  for (const auto& [device, runtime] : *in_use) {
    if (absl::Status st = runtime->allocator()->EmptyCache(); !st.ok()) {
      RecordError(st);
      ++failures;
    }
  }
  return failures == 0 ? 0 : -1;
}

extern "C" void gpualloc_torch_reset(void) { (void)gpualloc_torch_empty_cache(); }

extern "C" void gpualloc_torch_record_stream(void* ptr, void* stream) {
  absl::StatusOr<std::vector<std::pair<int, Runtime*>>> in_use = RuntimesInUse();
  if (!in_use.ok()) {
    RecordError(in_use.status());
    return;
  }
  for (const auto& [device, runtime] : *in_use) {
    if (!runtime->allocator()->Owns(ptr)) continue;
    absl::StatusOr<Stream> s = StreamFor(*runtime, device, stream);
    absl::Status st = s.ok() ? runtime->allocator()->RecordStream(Allocation{ptr, 1, *s}, *s)
                             : s.status();
    if (!st.ok()) RecordError(st, absl::StrFormat("gpualloc_torch_record_stream(%p)", ptr));
    return;
  }
  RecordError(absl::InvalidArgumentError(
      absl::StrCat("gpualloc_torch_record_stream: ", reinterpret_cast<std::uintptr_t>(ptr),
                   " is not a live allocation of this library")));
}

extern "C" void gpualloc_torch_set_memory_fraction(double fraction, int device) {
  absl::StatusOr<Runtime*> runtime = RuntimeFor(device);
  absl::Status st = runtime.status();
  if (st.ok() && !(fraction > 0 && fraction <= 1)) {
    st = absl::InvalidArgumentError(
        absl::StrCat("set_memory_fraction: ", fraction, " is not in (0, 1]"));
  }
  if (st.ok()) {
    absl::StatusOr<gpualloc::DeviceProperties> p =
        (*runtime)->backend().GetDeviceProperties(device);
    st = p.ok() ? (*runtime)->allocator()->SetReservedLimit(
                      static_cast<std::size_t>(fraction * static_cast<double>(p->total_bytes)))
                : p.status();
  }
  if (!st.ok()) {
    RecordError(st, absl::StrFormat("gpualloc_torch_set_memory_fraction(%g, %d)", fraction, device));
  }
}

extern "C" int gpualloc_torch_stats(int device, long long* out, int capacity) {
  absl::StatusOr<Runtime*> runtime = RuntimeFor(device);
  if (!runtime.ok()) {
    RecordError(runtime.status());
    return -1;
  }
  const gpualloc::MemoryStats s = (*runtime)->allocator()->stats();
  const long long values[] = {
      s.allocated_bytes.current, s.allocated_bytes.peak, s.reserved_bytes.current,
      s.reserved_bytes.peak,     s.active_blocks.current, s.segments.current,
      static_cast<long long>(s.oom_events), static_cast<long long>(s.cache_hits),
      static_cast<long long>(s.cache_misses), static_cast<long long>(s.cross_stream_reuses),
      static_cast<long long>((*runtime)->allocator()->reserved_limit()),
  };
  const int n = static_cast<int>(sizeof(values) / sizeof(values[0]));
  if (out == nullptr || capacity <= 0) return n;
  for (int i = 0; i < n && i < capacity; ++i) out[i] = values[i];
  return n;
}

extern "C" int gpualloc_torch_configuration_error(char* buffer, size_t len) {
  const TorchAllocators& a = Allocators();
  if (a.configuration.ok()) return 0;
  CopyMessage(a.configuration.message(), buffer, len);
  return 1;
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
  return CopyMessage(g_last_error, buffer, len);
}
