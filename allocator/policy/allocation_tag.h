// Allocation tags: a name for "who is allocating" (a tenant, a model, a
// request), set for a scope on the calling thread. Limiting adaptors apply
// per-tag limits with it; tracking adaptors group leaks by it.
//
//   {
//     ScopedAllocationTag tag("kv-cache");
//     auto a = resource.Allocate(bytes);   // counted against "kv-cache"
//   }
//
// Thread-local: a tag set in one thread never applies to another.
#ifndef GPUALLOC_ALLOCATOR_POLICY_ALLOCATION_TAG_H_
#define GPUALLOC_ALLOCATOR_POLICY_ALLOCATION_TAG_H_

#include <string>

#include "absl/strings/string_view.h"

namespace gpualloc {

// The innermost tag set on this thread, or "" when none is.
absl::string_view CurrentAllocationTag();

class ScopedAllocationTag {
 public:
  explicit ScopedAllocationTag(absl::string_view tag);
  ~ScopedAllocationTag();
  ScopedAllocationTag(const ScopedAllocationTag&) = delete;
  ScopedAllocationTag& operator=(const ScopedAllocationTag&) = delete;

 private:
  std::string previous_;
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_POLICY_ALLOCATION_TAG_H_
