// Fuzz target: the shared operation grammar driving the allocator stacks on
// the sim — the caching allocator (plain or with expandable segments), the
// size-class pool or the weights arena over it, the pinned host allocator
// with device switching, SharedMemory views and device-to-device transfers — with the shared invariant checker after every
// operation and a leak check at the end. Any violation aborts with the op
// sequence that caused it.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "harness/ops/interpreter.h"
#include "harness/ops/ops.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace gpualloc::harness;
  InterpreterOptions options;
  options.device_capacity = std::size_t{48} << 20;  // small: OOM paths are reachable
  if (size > 0) {  // the first byte picks the stack and the stream policy
    options.caching.cross_stream = static_cast<gpualloc::CrossStreamReuse>(data[0] % 3);
    options.stack = static_cast<InterpreterStack>((data[0] / 3) % 3);
    options.caching.expandable_segments = (data[0] / 9) % 2 == 1;
    options.caching.front_cache_blocks = (data[0] / 18) % 2 == 1 ? 4 : 0;
  }
  OpInterpreter interpreter(options);
  for (const Op& op : DecodeOps(data, size)) {
    absl::Status st = interpreter.Apply(op);
    if (!st.ok()) {
      std::fprintf(stderr, "caching_ops_fuzz: %s\n", std::string(st.message()).c_str());
      std::abort();
    }
  }
  absl::Status st = interpreter.Finish();
  if (!st.ok()) {
    std::fprintf(stderr, "caching_ops_fuzz: %s\n", std::string(st.message()).c_str());
    std::abort();
  }
  return 0;
}
