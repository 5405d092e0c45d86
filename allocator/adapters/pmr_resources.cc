#include "allocator/adapters/pmr_resources.h"

#include <new>

#include "allocator/buffer/release_report.h"
#include "allocator/common/exception_boundary.h"

namespace gpualloc {
namespace {
constexpr std::size_t kMaxAlignment = 256;
}  // namespace

void* PinnedPmrResource::do_allocate(std::size_t bytes, std::size_t alignment) {
  if (alignment > kMaxAlignment) throw std::bad_alloc();
  absl::StatusOr<PinnedBlock> b = allocator_->Allocate(bytes == 0 ? 1 : bytes, owner_);
  if (!b.ok()) throw std::bad_alloc();
  return b->ptr;
}

void PinnedPmrResource::do_deallocate(void* p, std::size_t bytes, std::size_t) {
  absl::Status st = allocator_->Deallocate(PinnedBlock{p, bytes, owner_});
  if (!st.ok()) ReportReleaseFailure("PinnedPmrResource", p, bytes, st);  // never throws
}

bool PinnedPmrResource::do_is_equal(const std::pmr::memory_resource& other) const noexcept {
  auto* o = dynamic_cast<const PinnedPmrResource*>(&other);
  return o != nullptr && o->allocator_ == allocator_ && o->owner_ == owner_;
}

void* ManagedPmrResource::do_allocate(std::size_t bytes, std::size_t alignment) {
  if (alignment > kMaxAlignment) throw std::bad_alloc();
  absl::StatusOr<void*> p = CallAtBoundary("malloc managed", [&] {
    return backend_->MallocManaged(device_, bytes == 0 ? 1 : bytes);
  });
  if (!p.ok()) throw std::bad_alloc();
  return *p;
}

void ManagedPmrResource::do_deallocate(void* p, std::size_t bytes, std::size_t) {
  absl::Status st = CallAtBoundary("free managed", [&] { return backend_->Free(device_, p); });
  if (!st.ok()) ReportReleaseFailure("ManagedPmrResource", p, bytes, st);
}

bool ManagedPmrResource::do_is_equal(const std::pmr::memory_resource& other) const noexcept {
  auto* o = dynamic_cast<const ManagedPmrResource*>(&other);
  return o != nullptr && o->backend_ == backend_ && o->device_ == device_;
}

}  // namespace gpualloc
