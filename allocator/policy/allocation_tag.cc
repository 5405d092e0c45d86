#include "allocator/policy/allocation_tag.h"

#include <utility>

namespace gpualloc {
namespace {
thread_local std::string tls_tag;
}  // namespace

absl::string_view CurrentAllocationTag() { return tls_tag; }

ScopedAllocationTag::ScopedAllocationTag(absl::string_view tag) : previous_(std::move(tls_tag)) {
  tls_tag = std::string(tag);
}

ScopedAllocationTag::~ScopedAllocationTag() { tls_tag = std::move(previous_); }

}  // namespace gpualloc
