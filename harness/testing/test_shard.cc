#include "harness/testing/test_shard.h"

#include <cstdio>
#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"

namespace gpualloc::harness {
namespace {

[[noreturn]] void Die(const std::string& why) {
  std::fprintf(stderr, "test sharding: %s\n", why.c_str());
  std::abort();
}

std::uint64_t Read(const char* name, std::uint64_t fallback) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  std::uint64_t value = 0;
  if (!absl::SimpleAtoi(text, &value)) Die(absl::StrFormat("%s=%s is not a number", name, text));
  return value;
}

}  // namespace

TestShard::TestShard(std::uint64_t index, std::uint64_t total) : index_(index), total_(total) {
  if (total_ == 0 || index_ >= total_) {
    Die(absl::StrFormat("shard index %d of %d shards is out of range", index_, total_));
  }
}

TestShard TestShard::FromEnvironment() {
  if (const char* status = std::getenv("TEST_SHARD_STATUS_FILE"); status != nullptr && *status) {
    if (std::FILE* f = std::fopen(status, "a")) std::fclose(f);
  }
  return TestShard(Read("TEST_SHARD_INDEX", 0), Read("TEST_TOTAL_SHARDS", 1));
}

std::string TestShard::Describe() const {
  if (total_ == 1) return "unsharded";
  return absl::StrFormat("shard %d of %d (seeds = %d mod %d)", index_, total_, index_, total_);
}

}  // namespace gpualloc::harness
