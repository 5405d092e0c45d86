// Fuzz target: the trace readers (our binary format and RMM's CSV) on
// arbitrary bytes. They must reject or accept, never crash; whatever they
// accept and validate must replay cleanly against a real allocator.
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "allocator/backend/sim/sim_backend.h"
#include "allocator/caching/caching_allocator.h"
#include "allocator/observe/trace_format.h"
#include "harness/trace/replay.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace gpualloc;
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<std::vector<TraceEvent>> events = ParseTrace(bytes);
  if (!events.ok() || !ValidateTrace(*events).ok()) return 0;
  for (TraceEvent& e : *events) e.size = std::min<std::uint64_t>(e.size, 64 << 20);  // keep it small
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(1, 256 << 20));
  auto cache = CachingAllocator::Create(sim, 0, {}).value();
  absl::StatusOr<harness::ReplayReport> report = harness::Replay(*events, *cache);
  if (!report.ok() || cache->stats().allocated_bytes.current != 0) {
    std::fprintf(stderr, "trace_parser_fuzz: an accepted trace did not replay cleanly: %s\n",
                 std::string(report.status().message()).c_str());
    std::abort();
  }
  return 0;
}
