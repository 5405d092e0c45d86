// Bazel's test sharding protocol, for suites that loop over seeds.
//
// With `shard_count = N` Bazel runs N copies of a test, each with
// TEST_TOTAL_SHARDS=N and its own TEST_SHARD_INDEX, and expects each to
// touch TEST_SHARD_STATUS_FILE to say it understood. A seed loop asks
// Owns(seed): shard i owns the seeds with seed % N == i, so the shards run
// disjoint shares and together run every seed. Without sharding one shard
// owns everything. GoogleTest shards test cases by itself; this is for the
// seeds inside one test case.
#ifndef GPUALLOC_HARNESS_TESTING_TEST_SHARD_H_
#define GPUALLOC_HARNESS_TESTING_TEST_SHARD_H_

#include <cstdint>
#include <string>

namespace gpualloc::harness {

class TestShard {
 public:
  // Reads the protocol's variables and acknowledges them (touches the
  // status file). Malformed values (an index outside [0, total)) are fatal:
  // running a wrong share silently would lose seeds.
  static TestShard FromEnvironment();
  TestShard(std::uint64_t index, std::uint64_t total);

  bool Owns(std::uint64_t seed) const { return seed % total_ == index_; }
  std::uint64_t index() const { return index_; }
  std::uint64_t total() const { return total_; }
  // "shard 2 of 4 (seeds = 2 mod 4)", or "unsharded".
  std::string Describe() const;

 private:
  std::uint64_t index_;
  std::uint64_t total_;
};

}  // namespace gpualloc::harness

#endif  // GPUALLOC_HARNESS_TESTING_TEST_SHARD_H_
