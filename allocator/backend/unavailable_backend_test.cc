// An unavailable backend refuses every call with the one reason it was given
// (none may pretend to succeed: a caller would go on with nothing), and the
// Backend defaults do the same for what a backend does not implement.
#include "allocator/backend/unavailable_backend.h"

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace gpualloc {
namespace {

TEST(UnavailableBackend, EveryCallFailsWithTheReason) {
  UnavailableBackend b("cuda", "built without CUDA");
  const Stream s{0x10, 0};
  const Event e{0x20, 0};
  int x = 0;
  const std::vector<std::pair<const char*, std::function<absl::Status()>>> calls = {
      {"DeviceCount", [&] { return b.DeviceCount().status(); }},
      {"GetDeviceProperties", [&] { return b.GetDeviceProperties(0).status(); }},
      {"GetMemoryInfo", [&] { return b.GetMemoryInfo(0).status(); }},
      {"SetDevice", [&] { return b.SetDevice(0); }},
      {"GetDevice", [&] { return b.GetDevice().status(); }},
      {"DeviceSynchronize", [&] { return b.DeviceSynchronize(0); }},
      {"Malloc", [&] { return b.Malloc(0, 64).status(); }},
      {"Free", [&] { return b.Free(0, &x); }},
      {"MallocAsync", [&] { return b.MallocAsync(64, s).status(); }},
      {"FreeAsync", [&] { return b.FreeAsync(&x, s); }},
      {"HostAlloc", [&] { return b.HostAlloc(0, 64).status(); }},
      {"HostFree", [&] { return b.HostFree(0, &x); }},
      {"MallocManaged", [&] { return b.MallocManaged(0, 64).status(); }},
      {"Prefetch", [&] { return b.Prefetch(&x, 4, 0, s); }},
      {"CreateStream", [&] { return b.CreateStream(0).status(); }},
      {"DestroyStream", [&] { return b.DestroyStream(s); }},
      {"SynchronizeStream", [&] { return b.SynchronizeStream(s); }},
      {"StreamWaitEvent", [&] { return b.StreamWaitEvent(s, e); }},
      {"CreateEvent", [&] { return b.CreateEvent(0).status(); }},
      {"RecordEvent", [&] { return b.RecordEvent(e, s); }},
      {"QueryEvent", [&] { return b.QueryEvent(e).status(); }},
      {"SynchronizeEvent", [&] { return b.SynchronizeEvent(e); }},
      {"DestroyEvent", [&] { return b.DestroyEvent(e); }},
      {"Memcpy", [&] { return b.Memcpy(&x, &x, 4, CopyKind::kDeviceToDevice); }},
      {"MemcpyAsync", [&] { return b.MemcpyAsync(&x, &x, 4, CopyKind::kDeviceToDevice, s); }},
      {"Memset", [&] { return b.Memset(&x, 0, 4); }},
      {"MemsetAsync", [&] { return b.MemsetAsync(&x, 0, 4, s); }},
      {"VmReserve", [&] { return b.VmReserve(0, 2 << 20).status(); }},
      {"VmRelease", [&] { return b.VmRelease(0x1000, 2 << 20); }},
      {"VmCreate", [&] { return b.VmCreate(0, 2 << 20).status(); }},
      {"VmReleasePhysical", [&] { return b.VmReleasePhysical(PhysicalChunk{}); }},
      {"VmMap", [&] { return b.VmMap(0x1000, PhysicalChunk{}); }},
      {"VmSetAccess", [&] { return b.VmSetAccess(0x1000, 2 << 20, 0); }},
      {"VmUnmap", [&] { return b.VmUnmap(0x1000, 2 << 20); }},
      {"LaunchHostFunc", [&] { return b.LaunchHostFunc(s, [](void*) {}, nullptr); }},
  };
  for (const auto& [name, call] : calls) {
    const absl::Status st = call();
    EXPECT_FALSE(st.ok()) << name;
    if (name == std::string("LaunchHostFunc")) {
      EXPECT_EQ(st.code(), absl::StatusCode::kUnimplemented) << name << ": " << st;
    } else {
      EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << name << ": " << st;
      EXPECT_EQ(st.message(), "built without CUDA") << name;
    }
  }
  EXPECT_EQ(b.name(), "cuda");
}

}  // namespace
}  // namespace gpualloc
