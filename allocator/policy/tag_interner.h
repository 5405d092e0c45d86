// TagInterner: one stable copy of each allocation tag (allocation_tag.h) a
// component has seen, so a per-allocation record keeps a pointer, not a
// string. Used by the caching allocator's recorder and the tracking
// adaptor's own table.
//
//   TagInterner tags(metadata_resource);
//   const std::pmr::string* tag = tags.Intern(CurrentAllocationTag());  // null: untagged
//   std::string text = TagInterner::Text(tag);
//
// Node-based: a copy's address never changes, and an insert that throws
// leaves the set as it was. Its nodes and strings come from the resource it
// is given. Not thread-safe: its owner's lock guards it.
#ifndef GPUALLOC_ALLOCATOR_POLICY_TAG_INTERNER_H_
#define GPUALLOC_ALLOCATOR_POLICY_TAG_INTERNER_H_

#include <functional>
#include <memory_resource>
#include <set>
#include <string>
#include <string_view>

#include "absl/strings/string_view.h"

namespace gpualloc {

class TagInterner {
 public:
  explicit TagInterner(std::pmr::memory_resource* resource) : tags_(resource) {}

  // The stable copy of `tag`, or null for "" (no tag). May throw
  // std::bad_alloc for a tag not seen before; nothing changes if it does.
  const std::pmr::string* Intern(absl::string_view tag) {
    if (tag.empty()) return nullptr;
    const std::string_view key(tag.data(), tag.size());
    if (last_ != nullptr && *last_ == key) return last_;  // the common case: the same tag again
    auto it = tags_.find(key);
    if (it == tags_.end()) it = tags_.emplace(key).first;
    last_ = &*it;
    return last_;
  }

  // The text of an interned tag ("" for null).
  static std::string Text(const std::pmr::string* tag) {
    return tag != nullptr ? std::string(*tag) : std::string();
  }

 private:
  std::pmr::set<std::pmr::string, std::less<>> tags_;
  const std::pmr::string* last_ = nullptr;
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_POLICY_TAG_INTERNER_H_
