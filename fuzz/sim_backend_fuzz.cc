// Fuzz target: hostile calls straight into the simulated device — wrong
// devices, freed, foreign and interior pointers, absurd sizes, copies past
// the end and in the wrong direction. Every call must return a Status (never
// crash, never corrupt), and the sim's accounting must balance at the end.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "allocator/backend/sim/sim_backend.h"

namespace {

using namespace gpualloc;

struct Reader {
  const std::uint8_t* p;
  std::size_t n;
  std::uint8_t Byte() { return n ? (--n, *p++) : 0; }
  std::uint32_t U32() {
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v = (v << 8) | Byte();
    return v;
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  SimBackend sim(SimOptions::WithDevices(2, 8 << 20));
  Reader in{data, size};
  struct Ptr {
    void* p;
    DeviceIndex device;
    bool pinned;
  };
  std::vector<Ptr> live;
  std::vector<unsigned char> host(1 << 16);
  std::vector<Stream> streams = {Stream::Default(0), Stream::Default(1)};
  auto pick = [&]() -> Ptr {
    if (live.empty()) return Ptr{host.data(), 0, false};
    Ptr q = live[in.Byte() % live.size()];
    const std::uint8_t skew = in.Byte();
    if (skew > 200) q.p = static_cast<char*>(q.p) + (skew - 200) * 64;  // interior pointer
    return q;
  };
  for (int step = 0; step < 200 && in.n > 0; ++step) {
    const std::uint8_t call = in.Byte() % 12;
    const DeviceIndex device = static_cast<DeviceIndex>(in.Byte() % 3) - (in.Byte() == 0xFF);
    const std::size_t bytes = in.Byte() == 0 ? (std::size_t{1} << 63) + in.U32() : in.U32() % (1 << 20);
    const Stream stream = streams[in.Byte() % streams.size()];
    switch (call) {
      case 0: case 1: {
        absl::StatusOr<void*> p = sim.Malloc(device, bytes);
        if (p.ok()) live.push_back({*p, device, false});
        break;
      }
      case 2: {
        absl::StatusOr<void*> p = sim.HostAlloc(device, bytes);
        if (p.ok()) live.push_back({*p, device, true});
        break;
      }
      case 3: {
        Ptr q = pick();
        absl::Status st = q.pinned ? sim.HostFree(device, q.p) : sim.Free(device, q.p);
        if (st.ok()) {
          for (std::size_t i = 0; i < live.size(); ++i) {
            if (live[i].p == q.p) { live.erase(live.begin() + i); break; }
          }
        }
        break;
      }
      case 4: {
        Ptr q = pick();
        sim.Memcpy(q.p, host.data(), bytes % host.size(), CopyKind::kHostToDevice).IgnoreError();
        break;
      }
      case 5: {
        Ptr q = pick();
        sim.Memcpy(host.data(), q.p, bytes % host.size(), CopyKind::kDeviceToHost).IgnoreError();
        break;
      }
      // Async work is synchronised at once: two streams touching the same
      // bytes unordered is a race on a GPU too, and the sim lets TSan see it.
      case 6: {
        Ptr a = pick(), b = pick();
        sim.MemcpyAsync(a.p, b.p, bytes % 4096, CopyKind::kDeviceToDevice, stream).IgnoreError();
        sim.SynchronizeStream(stream).IgnoreError();
        break;
      }
      case 7: {
        Ptr q = pick();
        sim.MemsetAsync(q.p, in.Byte(), bytes % 8192, stream).IgnoreError();
        sim.SynchronizeStream(stream).IgnoreError();
        break;
      }
      case 8: {
        absl::StatusOr<Stream> s = sim.CreateStream(device);
        if (s.ok() && streams.size() < 8) streams.push_back(*s);
        else if (s.ok()) sim.DestroyStream(*s).IgnoreError();
        break;
      }
      case 9:
        sim.SynchronizeStream(stream).IgnoreError();
        break;
      case 10: {
        absl::StatusOr<Event> e = sim.CreateEvent(device);
        if (e.ok()) {
          sim.RecordEvent(*e, stream).IgnoreError();
          sim.QueryEvent(*e).IgnoreError();
          sim.DestroyEvent(*e).IgnoreError();
        }
        break;
      }
      case 11:
        sim.DeviceSynchronize(device).IgnoreError();
        break;
    }
  }
  for (int d = 0; d < 2; ++d) sim.DeviceSynchronize(d).IgnoreError();
  for (const Ptr& q : live) {
    absl::Status st = q.pinned ? sim.HostFree(q.device, q.p) : sim.Free(q.device, q.p);
    if (!st.ok()) {
      std::fprintf(stderr, "sim_backend_fuzz: a live allocation could not be freed: %s\n",
                   std::string(st.message()).c_str());
      std::abort();
    }
  }
  for (Stream s : streams) {
    if (!s.is_default()) sim.DestroyStream(s).IgnoreError();
  }
  const SimAccounting acc = sim.Accounting();
  if (!acc.AllReleased()) {
    std::fprintf(stderr, "sim_backend_fuzz: %s", acc.Describe().c_str());
    std::abort();
  }
  return 0;
}
