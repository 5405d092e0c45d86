// The snapshot's JSON (read by the stress report and users' tooling) and the
// derived ratios, on values set by hand: each field, each edge.
#include <string>

#include "allocator/stats/memory_snapshot.h"
#include "allocator/stats/memory_stats.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace gpualloc {
namespace {

TEST(MemorySnapshot, JsonHoldsEverySegmentAndBlockField) {
  MemorySnapshot snap;
  snap.device = 3;
  SegmentSnapshot seg;
  seg.address = 0x10000;
  seg.size = 4096;
  seg.small_pool = true;
  seg.blocks.push_back({0x10000, 1024, 1000, BlockState::kAllocated, Stream{0x77, 3}});
  seg.blocks.push_back({0x10400, 2048, 0, BlockState::kPendingEvents, Stream{0x78, 3}});
  seg.blocks.push_back({0x10c00, 1024, 0, BlockState::kFree, Stream{0x77, 3}});
  snap.segments.push_back(seg);
  SegmentSnapshot large;
  large.address = 0x200000;
  large.size = 2 << 20;
  large.blocks.push_back({0x200000, 2 << 20, 0, BlockState::kFree, Stream{0, 3}});
  snap.segments.push_back(large);
  const nlohmann::json j = nlohmann::json::parse(snap.ToJson());
  EXPECT_EQ(j["device"], 3);
  ASSERT_EQ(j["segments"].size(), 2u);
  const nlohmann::json& s = j["segments"][0];
  EXPECT_EQ(s["address"], 0x10000u);
  EXPECT_EQ(s["size"], 4096u);
  EXPECT_EQ(s["small_pool"], true);
  ASSERT_EQ(s["blocks"].size(), 3u);
  EXPECT_EQ(s["blocks"][0]["size"], 1024u);
  EXPECT_EQ(s["blocks"][0]["requested"], 1000u);
  EXPECT_EQ(s["blocks"][0]["state"], "allocated");
  EXPECT_EQ(s["blocks"][0]["stream"], 0x77u);
  EXPECT_EQ(s["blocks"][1]["address"], 0x10400u);
  EXPECT_EQ(s["blocks"][1]["state"], "pending");
  EXPECT_EQ(s["blocks"][2]["state"], "free");
  EXPECT_EQ(j["segments"][1]["small_pool"], false);
  EXPECT_EQ(j["segments"][1]["blocks"][0]["size"], 2u << 20);
  EXPECT_EQ(MemorySnapshot{}.ToJson(), R"({"device":0,"segments":[]})");
}

TEST(MemoryStats, RatiosAtTheirEdges) {
  MemoryStats s;
  EXPECT_EQ(s.ReservedOverAllocated(), 0.0) << "nothing allocated";
  EXPECT_EQ(s.LargestFreeOverFree(), 1.0) << "no free bytes: no fragmentation";
  EXPECT_EQ(s.HitRate(), 0.0) << "no requests";
  s.allocated_bytes.Add(1000);
  s.reserved_bytes.Add(1500);
  EXPECT_DOUBLE_EQ(s.ReservedOverAllocated(), 1.5);
  s.free_bytes = 1;
  s.largest_free_block = 1;
  EXPECT_DOUBLE_EQ(s.LargestFreeOverFree(), 1.0) << "one free byte is one hole";
  s.free_bytes = 400;
  s.largest_free_block = 100;
  EXPECT_DOUBLE_EQ(s.LargestFreeOverFree(), 0.25);
  s.cache_hits = 1;
  EXPECT_DOUBLE_EQ(s.HitRate(), 1.0);
  s.cache_misses = 3;
  EXPECT_DOUBLE_EQ(s.HitRate(), 0.25);
  const std::string text = s.ToString();
  EXPECT_NE(text.find("allocated 1000 B"), std::string::npos) << text;
  EXPECT_NE(text.find("reserved 1500 B"), std::string::npos) << text;
  EXPECT_NE(text.find("hit rate 0.250"), std::string::npos) << text;
  EXPECT_NE(text.find("reserved/allocated 1.500"), std::string::npos) << text;
}

}  // namespace
}  // namespace gpualloc
