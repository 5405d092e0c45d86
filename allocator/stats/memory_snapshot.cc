#include "allocator/stats/memory_snapshot.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"

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
  nlohmann::json segs = nlohmann::json::array();
  for (const SegmentSnapshot& s : segments) {
    nlohmann::json blocks = nlohmann::json::array();
    for (const BlockSnapshot& b : s.blocks) {
      blocks.push_back({{"address", b.address},
                        {"size", b.size},
                        {"requested", b.requested},
                        {"state", StateName(b.state)},
                        {"stream", b.stream.handle}});
    }
    segs.push_back({{"address", s.address},
                    {"size", s.size},
                    {"small_pool", s.small_pool},
                    {"blocks", std::move(blocks)}});
  }
  return nlohmann::json{{"device", device}, {"segments", std::move(segs)}}.dump();
}

}  // namespace gpualloc
