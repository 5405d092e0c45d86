#include "allocator/stats/memory_snapshot.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace gpualloc {
namespace {

const char* StateName(BlockState s) {
  switch (s) {
    case BlockState::kFree: return "free";
    case BlockState::kAllocated: return "allocated";
    case BlockState::kPendingEvents: return "pending";
  }
  return "unknown";
}

}  // namespace

std::string MemorySnapshot::ToJson() const {
  std::string out = absl::StrFormat("{\"device\":%d,\"segments\":[", device);
  for (std::size_t i = 0; i < segments.size(); ++i) {
    const SegmentSnapshot& s = segments[i];
    absl::StrAppendFormat(&out, "%s{\"address\":%d,\"size\":%d,\"small_pool\":%s,\"blocks\":[",
                          i ? "," : "", s.address, s.size, s.small_pool ? "true" : "false");
    for (std::size_t j = 0; j < s.blocks.size(); ++j) {
      const BlockSnapshot& b = s.blocks[j];
      absl::StrAppendFormat(&out,
                            "%s{\"address\":%d,\"size\":%d,\"requested\":%d,\"state\":\"%s\","
                            "\"stream\":%d}",
                            j ? "," : "", b.address, b.size, b.requested, StateName(b.state),
                            b.stream.handle);
    }
    out += "]}";
  }
  out += "]}";
  return out;
}

}  // namespace gpualloc
