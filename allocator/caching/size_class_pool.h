// SizeClassPool: small allocations served from per-size-class free lists.
//
// Requests up to the largest class are rounded up to a class (default 256 B,
// 1 KiB, 4 KiB, 16 KiB, 64 KiB) and carved from slabs (default 2 MiB) that
// the pool obtains from its upstream resource; larger requests pass straight
// through. Each class has its own mutex, so threads allocating different
// sizes do not contend. A block freed on stream S is reused on S only. A slab
// is obtained on the stream that first needs it, and its never-used room goes
// to requests on that stream only (the upstream made it safe there, and
// nowhere else).
// Empty slabs stay cached up to `max_cached_empty_bytes` per class; beyond
// that the least recently used empty slab goes back upstream (after the
// device is synchronised, since its blocks may have been used on any stream).
//
// Per class it counts hits (served from a free list), misses (a new slab),
// and returns (slabs given back). Thread-safe.
#ifndef GPUALLOC_ALLOCATOR_CACHING_SIZE_CLASS_POOL_H_
#define GPUALLOC_ALLOCATOR_CACHING_SIZE_CLASS_POOL_H_

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "allocator/backend/backend.h"
#include "allocator/common/mutex.h"
#include "allocator/resource/memory_resource.h"

namespace gpualloc {

struct SizeClassOptions {
  // Ascending; each a multiple of the upstream's alignment.
  std::vector<std::size_t> classes = {256, 1024, 4096, 16384, 65536};
  std::size_t slab_bytes = std::size_t{2} << 20;
  std::size_t max_cached_empty_bytes = std::size_t{8} << 20;
};

struct SizeClassStats {
  std::size_t class_bytes = 0;
  std::uint64_t hits = 0;
  std::uint64_t misses = 0;
  std::uint64_t returns = 0;
  std::size_t live_blocks = 0;
  std::size_t slabs = 0;
};

class SizeClassPool final : public MemoryResource {
 public:
  // `backend` synchronises the device before a slab is given back.
  static absl::StatusOr<std::unique_ptr<SizeClassPool>> Create(
      std::shared_ptr<MemoryResource> upstream, std::shared_ptr<Backend> backend,
      SizeClassOptions options);
  // Gives every slab back (live blocks in them are the caller's leak).
  ~SizeClassPool() override;

  absl::string_view name() const override { return "size-class pool"; }
  DeviceIndex device() const override { return upstream_->device(); }
  std::size_t alignment() const override { return upstream_->alignment(); }
  MemoryStats stats() const override;
  std::vector<SizeClassStats> class_stats() const;

  // Gives every empty slab back upstream.
  absl::Status Trim();

 private:
  struct Slab {
    Allocation allocation;
    std::size_t next_unused = 0;  // bump offset of never-used blocks
    std::size_t live = 0;
    std::uint64_t last_used = 0;
  };
  // Blocks carry their slab, so the hot paths never search the slab map.
  struct FreeBlock {
    std::uintptr_t address;
    Slab* slab;
  };
  struct LiveBlock {
    std::size_t requested;  // bytes asked
    Slab* slab;
  };
  struct SizeClass {
    std::size_t bytes = 0;
    mutable Mutex mu;
    std::map<std::uintptr_t, std::unique_ptr<Slab>> slabs ABSL_GUARDED_BY(mu);  // by base address
    // Standard node-based tables: an insert that throws changes nothing (an
    // Abseil flat table would be left corrupt), and a live entry is prepared
    // before the upstream call (allocator/common/node_insert.h).
    std::unordered_map<std::uintptr_t, std::vector<FreeBlock>> free_by_stream ABSL_GUARDED_BY(mu);
    std::unordered_map<std::uintptr_t, LiveBlock> live ABSL_GUARDED_BY(mu);  // by address
    std::size_t empty_slab_bytes ABSL_GUARDED_BY(mu) = 0;  // slabs with nothing live
    std::uint64_t tick ABSL_GUARDED_BY(mu) = 0;
    SizeClassStats stats ABSL_GUARDED_BY(mu);
  };

  SizeClassPool(std::shared_ptr<MemoryResource> upstream, std::shared_ptr<Backend> backend,
                SizeClassOptions options);
  absl::StatusOr<Allocation> DoAllocate(std::size_t bytes, Stream stream) override;
  absl::Status DoDeallocate(const Allocation& allocation, Stream stream) override;
  SizeClass* ClassFor(std::size_t bytes);
  // Gives empty slabs of `c` back, LRU first, until at most `keep` empty bytes remain.
  void ReleaseEmptySlabs(SizeClass& c, std::size_t keep) ABSL_EXCLUSIVE_LOCKS_REQUIRED(c.mu);

  const std::shared_ptr<MemoryResource> upstream_;
  const std::shared_ptr<Backend> backend_;
  const SizeClassOptions options_;
  std::vector<std::unique_ptr<SizeClass>> classes_;
  mutable Mutex passthrough_mu_;
  std::unordered_map<void*, std::size_t> passthrough_ ABSL_GUARDED_BY(passthrough_mu_);
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_CACHING_SIZE_CLASS_POOL_H_
