#include "harness/testing/test_shard.h"

#include <set>

#include "gtest/gtest.h"

namespace gpualloc::harness {
namespace {

TEST(TestShard, ShardsRunDisjointSharesThatTogetherCoverEverySeed) {
  for (std::uint64_t total : {1u, 2u, 3u, 7u}) {
    std::multiset<std::uint64_t> run;
    for (std::uint64_t i = 0; i < total; ++i) {
      const TestShard shard(i, total);
      for (std::uint64_t seed = 1; seed <= 100; ++seed) {
        if (shard.Owns(seed)) run.insert(seed);
      }
    }
    ASSERT_EQ(run.size(), 100u) << total << " shards";
    for (std::uint64_t seed = 1; seed <= 100; ++seed) EXPECT_EQ(run.count(seed), 1u) << seed;
  }
}

TEST(TestShard, AnIndexOutsideTheShardsIsFatalNotASilentlyWrongShare) {
  EXPECT_DEATH(TestShard(4, 4), "out of range");
  EXPECT_DEATH(TestShard(0, 0), "out of range");
}

}  // namespace
}  // namespace gpualloc::harness
