// ArenaResource: packs many long-lived tensors (model weights) into a few
// large chunks, the selective pooling of the HIP memory-pooling review done
// with its findings fixed:
//  - `pack_threshold` (default 32 MiB) decides: smaller tensors are packed,
//    larger ones get a segment of their own. Why 32 MiB: the largest tensors
//    of a model (embeddings, output projections) are few, often need their own
//    layout, and packing them would leave chunk tails of the same order
//    unused; everything below is numerous and packs with little waste.
//  - `chunk_bytes` (default 1 GiB) is configurable, not a constant; when the
//    device cannot give a whole chunk, a smaller one (down to the request) is
//    tried.
//  - Every packed tensor starts on `alignment` (default 4 KiB: the page size
//    ROCm and CUDA migrate and map at).
//  - Offsets are computed with checked arithmetic: an offset that would wrap
//    is an error, never a pointer.
// Packed space is bump-allocated and not reused while its chunk lives
// (weights are freed together, at unload). A chunk is obtained on the stream
// that needs it and packs requests of that stream only (the upstream made it
// safe there, and nowhere else); a chunk goes back upstream when
// its last tensor is freed. Thread-safe: one mutex.
#ifndef GPUALLOC_ALLOCATOR_CACHING_ARENA_RESOURCE_H_
#define GPUALLOC_ALLOCATOR_CACHING_ARENA_RESOURCE_H_

#include <map>
#include <memory>
#include <memory_resource>
#include <mutex>
#include <unordered_map>

#include "allocator/common/mutex.h"
#include "allocator/common/pmr_object.h"
#include "allocator/resource/memory_resource.h"

namespace gpualloc {

struct ArenaOptions {
  std::size_t pack_threshold = std::size_t{32} << 20;
  std::size_t chunk_bytes = std::size_t{1} << 30;
  std::size_t alignment = 4096;
  // Where the arena keeps its bookkeeping (chunks, placements). Null:
  // new/delete. Must outlive the arena; called only under its lock. If it
  // throws std::bad_alloc, Allocate fails with ResourceExhausted and changes
  // nothing (no chunk or segment is left obtained upstream).
  std::pmr::memory_resource* metadata_resource = nullptr;
};

struct ArenaStats {
  std::size_t chunks = 0;
  std::size_t packed_tensors = 0;
  std::size_t own_segment_tensors = 0;
  std::size_t padding_bytes = 0;  // alignment padding inside chunks
};

class ArenaResource final : public MemoryResource {
 public:
  static absl::StatusOr<std::unique_ptr<ArenaResource>> Create(
      std::shared_ptr<MemoryResource> upstream, ArenaOptions options);
  ~ArenaResource() override;

  absl::string_view name() const override { return "arena"; }
  DeviceIndex device() const override { return upstream_->device(); }
  std::size_t alignment() const override { return options_.alignment; }
  MemoryStats stats() const override;
  ArenaStats arena_stats() const;

 private:
  struct Chunk {
    Allocation allocation;
    std::size_t used = 0;  // bump offset
    std::size_t live = 0;
  };
  struct Placement {
    std::size_t bytes;     // requested
    Chunk* chunk;          // null: a segment of its own
    Allocation upstream;   // own segment: what the upstream gave; packed: the slot
  };

  ArenaResource(std::shared_ptr<MemoryResource> upstream, ArenaOptions options)
      : upstream_(std::move(upstream)),
        options_(options),
        metadata_(MetadataResourceOr(options.metadata_resource)),
        chunks_(metadata_),
        live_(metadata_) {}
  absl::StatusOr<Allocation> DoAllocate(std::size_t bytes, Stream stream) override;
  absl::Status DoDeallocate(const Allocation& allocation, Stream stream) override;

  const std::shared_ptr<MemoryResource> upstream_;
  const ArenaOptions options_;
  mutable Mutex mu_;
  std::pmr::memory_resource* const metadata_;  // options_.metadata_resource, or new/delete
  // Node-based maps: their inserts are prepared before the upstream call and
  // committed after it without allocating (allocator/common/node_insert.h).
  std::pmr::map<std::uintptr_t, PmrUniquePtr<Chunk>> chunks_ ABSL_GUARDED_BY(mu_);
  std::pmr::unordered_map<void*, Placement> live_ ABSL_GUARDED_BY(mu_);
  MemoryStats stats_ ABSL_GUARDED_BY(mu_);
  ArenaStats arena_stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_CACHING_ARENA_RESOURCE_H_
