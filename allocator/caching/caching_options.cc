#include "allocator/caching/caching_options.h"

#include "absl/strings/str_format.h"
#include "allocator/common/checked_math.h"

namespace gpualloc {

absl::Status CachingOptions::Validate() const {
  if (!IsPowerOfTwo(min_block_bytes) || min_block_bytes < 256) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "min_block_bytes must be a power of two >= 256 (device alignment), got %d",
        min_block_bytes));
  }
  if (small_request_max < min_block_bytes || small_segment_bytes < small_request_max ||
      small_segment_bytes % min_block_bytes != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "small pool: need min_block_bytes (%d) <= small_request_max (%d) <= "
        "small_segment_bytes (%d), the latter a multiple of min_block_bytes",
        min_block_bytes, small_request_max, small_segment_bytes));
  }
  if (large_segment_round == 0 || large_segment_round % min_block_bytes != 0 ||
      large_segment_bytes < large_request_own_segment_min ||
      large_segment_bytes % min_block_bytes != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "large pool: need large_segment_round (%d) a positive multiple of min_block_bytes, "
        "and large_segment_bytes (%d) >= large_request_own_segment_min (%d)",
        large_segment_round, large_segment_bytes, large_request_own_segment_min));
  }
  if (gc_threshold < 0 || gc_threshold > 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("gc_threshold must be in [0, 1], got %g", gc_threshold));
  }
  if (front_cache_blocks > kMaxFrontCacheBlocks) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "front_cache_blocks must be at most %d, got %d", kMaxFrontCacheBlocks,
        front_cache_blocks));
  }
  if (front_cache_blocks > 0 && front_cache_bytes < min_block_bytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "front_cache_bytes (%d) must hold at least one block of min_block_bytes (%d)",
        front_cache_bytes, min_block_bytes));
  }
  return absl::OkStatus();
}

namespace {
constexpr const char* kReuseNames[] = {"none", "opportunistic", "follow"};
}  // namespace

absl::string_view CrossStreamReuseName(CrossStreamReuse reuse) {
  return kReuseNames[static_cast<int>(reuse)];
}

bool ParseCrossStreamReuse(absl::string_view name, CrossStreamReuse* reuse) {
  for (int i = 0; i < 3; ++i) {
    if (name == kReuseNames[i]) {
      *reuse = static_cast<CrossStreamReuse>(i);
      return true;
    }
  }
  return false;
}

}  // namespace gpualloc
