#include "allocator/backend/failpoints/failpoint_backend.h"

#include <new>
#include <stdexcept>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "allocator/common/status_macros.h"

namespace gpualloc {
namespace {

constexpr std::array<absl::string_view, 6> kActionNames = {
    "error", "bad_alloc", "runtime_error", "foreign", "delay", "sticky"};

}  // namespace

absl::string_view FaultActionName(FaultAction action) {
  return kActionNames[static_cast<int>(action)];
}

bool ParseFaultAction(absl::string_view name, FaultAction* action) {
  for (std::size_t i = 0; i < kActionNames.size(); ++i) {
    if (kActionNames[i] == name) {
      *action = static_cast<FaultAction>(i);
      return true;
    }
  }
  return false;
}

FailpointBackend::FailpointBackend(std::shared_ptr<Backend> inner, std::uint64_t seed)
    : inner_(std::move(inner)),
      name_(absl::StrCat("failpoint(", inner_->name(), ")")),
      rng_(seed) {}

void FailpointBackend::AddRule(FaultRule rule) {
  std::lock_guard<std::mutex> lock(mu_);
  rules_.push_back(ActiveRule{std::move(rule), 0});
}

void FailpointBackend::ClearRules() {
  std::lock_guard<std::mutex> lock(mu_);
  rules_.clear();
}

void FailpointBackend::ClearStickyError() {
  std::lock_guard<std::mutex> lock(mu_);
  sticky_ = false;
}

std::uint64_t FailpointBackend::calls(BackendOp op) const {
  std::lock_guard<std::mutex> lock(mu_);
  return calls_[static_cast<int>(op)];
}

std::uint64_t FailpointBackend::total_calls() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::uint64_t total = 0;
  for (std::uint64_t c : calls_) total += c;
  return total - calls_[static_cast<int>(BackendOp::kHostAccess)];
}

std::uint64_t FailpointBackend::faults_fired() const {
  std::lock_guard<std::mutex> lock(mu_);
  return faults_fired_;
}

absl::Status FailpointBackend::Intercept(BackendOp op, DeviceIndex device, std::size_t bytes,
                                         const void* ptr) {
  CallInfo call{op, device, bytes, ptr, 0};
  // Copied out under the lock: the rule vector may change once it is released.
  FaultAction action = FaultAction::kReturnError;
  absl::StatusCode code = absl::StatusCode::kOk;
  std::chrono::microseconds delay{0};
  bool fired = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    call.call_number = ++calls_[static_cast<int>(op)];
    const bool host_access = op == BackendOp::kHostAccess;
    if (sticky_ && !host_access) {
      ++faults_fired_;
      return absl::InternalError(absl::StrFormat(
          "injected sticky device error: %s call #%d fails because an earlier call lost the "
          "device",
          BackendOpName(op), call.call_number));
    }
    for (ActiveRule& active : rules_) {
      const FaultRule& rule = active.rule;
      if (rule.op.has_value() ? *rule.op != op : host_access) continue;
      if (rule.max_fires >= 0 && active.fires >= rule.max_fires) continue;
      bool fire = false;
      switch (rule.schedule) {
        case FaultRule::Schedule::kNthCall:
          fire = call.call_number == rule.n;
          break;
        case FaultRule::Schedule::kEveryNth:
          fire = rule.n > 0 && call.call_number % rule.n == 0;
          break;
        case FaultRule::Schedule::kProbability:
          fire = std::uniform_real_distribution<double>(0, 1)(rng_) < rule.probability;
          break;
        case FaultRule::Schedule::kPredicate:
          fire = rule.predicate && rule.predicate(call);
          break;
      }
      if (fire) {
        ++active.fires;
        ++faults_fired_;
        if (rule.action == FaultAction::kStickyError) sticky_ = true;
        fired = true;
        action = rule.action;
        code = rule.code;
        delay = rule.delay;
        break;
      }
    }
    if (!fired) return absl::OkStatus();
  }
  const std::string what =
      absl::StrFormat("injected fault: %s call #%d (device %d, %d bytes, ptr %p)",
                      BackendOpName(op), call.call_number, device, bytes, ptr);
  switch (action) {
    case FaultAction::kReturnError:
      return absl::Status(code, what);
    case FaultAction::kStickyError:
      return absl::InternalError(absl::StrCat(what, "; the device is lost from now on"));
    case FaultAction::kThrowBadAlloc:
      throw std::bad_alloc();
    case FaultAction::kThrowRuntimeError:
      throw std::runtime_error(what);
    case FaultAction::kThrowForeign:
      throw InjectedForeignFault{static_cast<int>(call.call_number)};
    case FaultAction::kDelay:
      std::this_thread::sleep_for(delay);
      return absl::OkStatus();
  }
  return absl::OkStatus();
}

// Every method: intercept, then forward.
#define GPUALLOC_FORWARD(intercept_args, call) \
  GPUALLOC_RETURN_IF_ERROR(Intercept intercept_args); \
  return inner_->call

absl::StatusOr<int> FailpointBackend::DeviceCount() {
  GPUALLOC_FORWARD((BackendOp::kDeviceCount), DeviceCount());
}
absl::StatusOr<DeviceProperties> FailpointBackend::GetDeviceProperties(DeviceIndex device) {
  GPUALLOC_FORWARD((BackendOp::kDeviceProperties, device), GetDeviceProperties(device));
}
absl::StatusOr<MemoryInfo> FailpointBackend::GetMemoryInfo(DeviceIndex device) {
  GPUALLOC_FORWARD((BackendOp::kMemoryInfo, device), GetMemoryInfo(device));
}
absl::Status FailpointBackend::SetDevice(DeviceIndex device) {
  GPUALLOC_FORWARD((BackendOp::kSetDevice, device), SetDevice(device));
}
absl::StatusOr<DeviceIndex> FailpointBackend::GetDevice() {
  GPUALLOC_FORWARD((BackendOp::kGetDevice), GetDevice());
}
absl::Status FailpointBackend::DeviceSynchronize(DeviceIndex device) {
  GPUALLOC_FORWARD((BackendOp::kDeviceSynchronize, device), DeviceSynchronize(device));
}
absl::StatusOr<void*> FailpointBackend::Malloc(DeviceIndex device, std::size_t bytes) {
  GPUALLOC_FORWARD((BackendOp::kMalloc, device, bytes), Malloc(device, bytes));
}
absl::Status FailpointBackend::Free(DeviceIndex device, void* ptr) {
  GPUALLOC_FORWARD((BackendOp::kFree, device, 0, ptr), Free(device, ptr));
}
absl::StatusOr<void*> FailpointBackend::MallocAsync(std::size_t bytes, Stream stream) {
  GPUALLOC_FORWARD((BackendOp::kMallocAsync, stream.device, bytes), MallocAsync(bytes, stream));
}
absl::Status FailpointBackend::FreeAsync(void* ptr, Stream stream) {
  GPUALLOC_FORWARD((BackendOp::kFreeAsync, stream.device, 0, ptr), FreeAsync(ptr, stream));
}
absl::StatusOr<void*> FailpointBackend::HostAlloc(DeviceIndex device, std::size_t bytes) {
  GPUALLOC_FORWARD((BackendOp::kHostAlloc, device, bytes), HostAlloc(device, bytes));
}
absl::Status FailpointBackend::HostFree(DeviceIndex device, void* ptr) {
  GPUALLOC_FORWARD((BackendOp::kHostFree, device, 0, ptr), HostFree(device, ptr));
}
absl::StatusOr<void*> FailpointBackend::MallocManaged(DeviceIndex device, std::size_t bytes) {
  GPUALLOC_FORWARD((BackendOp::kMallocManaged, device, bytes), MallocManaged(device, bytes));
}
absl::Status FailpointBackend::Prefetch(const void* ptr, std::size_t bytes,
                                        DeviceIndex destination, Stream stream) {
  GPUALLOC_FORWARD((BackendOp::kPrefetch, destination, bytes, ptr),
                   Prefetch(ptr, bytes, destination, stream));
}
absl::StatusOr<Stream> FailpointBackend::CreateStream(DeviceIndex device) {
  GPUALLOC_FORWARD((BackendOp::kStreamCreate, device), CreateStream(device));
}
absl::StatusOr<Stream> FailpointBackend::CreateStreamWithPriority(DeviceIndex device,
                                                                  int priority) {
  GPUALLOC_FORWARD((BackendOp::kStreamCreate, device), CreateStreamWithPriority(device, priority));
}
absl::StatusOr<int> FailpointBackend::GetStreamPriority(Stream stream) {
  return inner_->GetStreamPriority(stream);  // a query: no fault site of its own
}
absl::StatusOr<bool> FailpointBackend::CanAccessPeer(DeviceIndex device, DeviceIndex peer) {
  return inner_->CanAccessPeer(device, peer);  // a query: no fault site of its own
}
absl::Status FailpointBackend::EnablePeerAccess(DeviceIndex device, DeviceIndex peer) {
  GPUALLOC_FORWARD((BackendOp::kEnablePeerAccess, device), EnablePeerAccess(device, peer));
}
absl::Status FailpointBackend::MemcpyPeerAsync(void* dst, DeviceIndex dst_device, const void* src,
                                               DeviceIndex src_device, std::size_t bytes,
                                               Stream stream) {
  GPUALLOC_FORWARD((BackendOp::kMemcpyPeerAsync, stream.device, bytes, dst),
                   MemcpyPeerAsync(dst, dst_device, src, src_device, bytes, stream));
}
absl::Status FailpointBackend::DestroyStream(Stream stream) {
  GPUALLOC_FORWARD((BackendOp::kStreamDestroy, stream.device), DestroyStream(stream));
}
absl::Status FailpointBackend::SynchronizeStream(Stream stream) {
  GPUALLOC_FORWARD((BackendOp::kStreamSynchronize, stream.device), SynchronizeStream(stream));
}
absl::Status FailpointBackend::StreamWaitEvent(Stream stream, Event event) {
  GPUALLOC_FORWARD((BackendOp::kStreamWaitEvent, stream.device), StreamWaitEvent(stream, event));
}
absl::StatusOr<Event> FailpointBackend::CreateEvent(DeviceIndex device) {
  GPUALLOC_FORWARD((BackendOp::kEventCreate, device), CreateEvent(device));
}
absl::Status FailpointBackend::RecordEvent(Event event, Stream stream) {
  GPUALLOC_FORWARD((BackendOp::kEventRecord, stream.device), RecordEvent(event, stream));
}
absl::StatusOr<bool> FailpointBackend::QueryEvent(Event event) {
  GPUALLOC_FORWARD((BackendOp::kEventQuery, event.device), QueryEvent(event));
}
absl::Status FailpointBackend::SynchronizeEvent(Event event) {
  GPUALLOC_FORWARD((BackendOp::kEventSynchronize, event.device), SynchronizeEvent(event));
}
absl::Status FailpointBackend::DestroyEvent(Event event) {
  GPUALLOC_FORWARD((BackendOp::kEventDestroy, event.device), DestroyEvent(event));
}
absl::Status FailpointBackend::Memcpy(void* dst, const void* src, std::size_t bytes,
                                      CopyKind kind) {
  GPUALLOC_FORWARD((BackendOp::kMemcpy, 0, bytes, dst), Memcpy(dst, src, bytes, kind));
}
absl::Status FailpointBackend::MemcpyAsync(void* dst, const void* src, std::size_t bytes,
                                           CopyKind kind, Stream stream) {
  GPUALLOC_FORWARD((BackendOp::kMemcpyAsync, stream.device, bytes, dst),
                   MemcpyAsync(dst, src, bytes, kind, stream));
}
absl::Status FailpointBackend::Memset(void* dst, int value, std::size_t bytes) {
  GPUALLOC_FORWARD((BackendOp::kMemset, 0, bytes, dst), Memset(dst, value, bytes));
}
absl::Status FailpointBackend::MemsetAsync(void* dst, int value, std::size_t bytes,
                                           Stream stream) {
  GPUALLOC_FORWARD((BackendOp::kMemsetAsync, stream.device, bytes, dst),
                   MemsetAsync(dst, value, bytes, stream));
}
absl::StatusOr<std::uintptr_t> FailpointBackend::VmReserve(DeviceIndex device,
                                                           std::size_t bytes) {
  GPUALLOC_FORWARD((BackendOp::kVmReserve, device, bytes), VmReserve(device, bytes));
}
absl::Status FailpointBackend::VmRelease(std::uintptr_t address, std::size_t bytes) {
  GPUALLOC_FORWARD((BackendOp::kVmRelease, 0, bytes, reinterpret_cast<const void*>(address)),
                   VmRelease(address, bytes));
}
absl::StatusOr<PhysicalChunk> FailpointBackend::VmCreate(DeviceIndex device, std::size_t bytes) {
  GPUALLOC_FORWARD((BackendOp::kVmCreate, device, bytes), VmCreate(device, bytes));
}
absl::Status FailpointBackend::VmReleasePhysical(PhysicalChunk chunk) {
  GPUALLOC_FORWARD((BackendOp::kVmReleasePhysical, chunk.device, chunk.bytes),
                   VmReleasePhysical(chunk));
}
absl::Status FailpointBackend::VmMap(std::uintptr_t address, PhysicalChunk chunk) {
  GPUALLOC_FORWARD(
      (BackendOp::kVmMap, chunk.device, chunk.bytes, reinterpret_cast<const void*>(address)),
      VmMap(address, chunk));
}
absl::Status FailpointBackend::VmSetAccess(std::uintptr_t address, std::size_t bytes,
                                           DeviceIndex device) {
  GPUALLOC_FORWARD((BackendOp::kVmSetAccess, device, bytes, reinterpret_cast<const void*>(address)),
                   VmSetAccess(address, bytes, device));
}
absl::Status FailpointBackend::VmUnmap(std::uintptr_t address, std::size_t bytes) {
  GPUALLOC_FORWARD((BackendOp::kVmUnmap, 0, bytes, reinterpret_cast<const void*>(address)),
                   VmUnmap(address, bytes));
}
absl::Status FailpointBackend::NoteHostAccess(const void* ptr, std::size_t bytes,
                                              AccessMode mode) {
  GPUALLOC_FORWARD((BackendOp::kHostAccess, 0, bytes, ptr), NoteHostAccess(ptr, bytes, mode));
}

#undef GPUALLOC_FORWARD

}  // namespace gpualloc
