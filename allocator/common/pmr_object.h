// Single objects in a std::pmr::memory_resource, owned by a unique_ptr that
// gives them back to the same resource.
//
// Components that keep their host bookkeeping in a resource their user
// injects (CachingOptions::metadata_resource) allocate their nodes this way,
// so every byte of that bookkeeping comes from, and returns to, the resource.
//
//   PmrUniquePtr<Segment> s = MakePmrUnique<Segment>(resource);  // may throw
//
// MakePmrUnique throws whatever the resource throws (std::bad_alloc) and
// leaks nothing when T's constructor throws.
#ifndef GPUALLOC_ALLOCATOR_COMMON_PMR_OBJECT_H_
#define GPUALLOC_ALLOCATOR_COMMON_PMR_OBJECT_H_

#include <memory>
#include <memory_resource>
#include <utility>

namespace gpualloc {

template <typename T>
struct PmrDeleter {
  std::pmr::memory_resource* resource = nullptr;
  void operator()(T* p) const noexcept {
    std::pmr::polymorphic_allocator<T>(resource).delete_object(p);
  }
};

template <typename T>
using PmrUniquePtr = std::unique_ptr<T, PmrDeleter<T>>;

template <typename T, typename... Args>
PmrUniquePtr<T> MakePmrUnique(std::pmr::memory_resource* resource, Args&&... args) {
  std::pmr::polymorphic_allocator<T> alloc(resource);
  return PmrUniquePtr<T>(alloc.template new_object<T>(std::forward<Args>(args)...),
                         PmrDeleter<T>{resource});
}

// The metadata resource a component was given, or new/delete for null: the
// default of every `metadata_resource` option.
inline std::pmr::memory_resource* MetadataResourceOr(std::pmr::memory_resource* given) {
  return given != nullptr ? given : std::pmr::new_delete_resource();
}

// Destroys and frees an object MakePmrUnique made and a unique_ptr released.
template <typename T>
void PmrDelete(std::pmr::memory_resource* resource, T* p) noexcept {
  PmrDeleter<T>{resource}(p);
}

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_COMMON_PMR_OBJECT_H_
