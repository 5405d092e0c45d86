// TrackingAdaptor: remembers every live allocation that passes through it —
// size, device, stream, the allocation tag (ScopedAllocationTag) and,
// optionally, the call stack — so leaks can be listed and attributed.
//
//   auto tracked = std::make_shared<TrackingAdaptor>(cache, TrackingOptions{});
//   ...
//   std::cout << tracked->Report();   // leaks grouped by tag and call site
//
// Stacks cost a stack walk per allocation and are off by default; the
// report then groups by tag alone.
//
// Over a resource that records its allocations itself (an AllocationRecorder:
// the caching allocator), with stacks off, the adaptor keeps no table: it
// starts the upstream's recorder and reads it, so tracking costs a few stores
// per allocation under the lock the allocator takes anyway. It then lists
// every allocation made on the upstream since the adaptor was created,
// through the adaptor or not, and a foreign or double free is the upstream's
// to reject. `own_table` keeps a table in the adaptor instead (only what
// passes through it).
//
// Thread-safe: one mutex around the table; the upstream runs outside it, and
// an entry leaves the table before the upstream free (no stale entry if the
// pointer is reused at once).
#ifndef GPUALLOC_ALLOCATOR_OBSERVE_TRACKING_ADAPTOR_H_
#define GPUALLOC_ALLOCATOR_OBSERVE_TRACKING_ADAPTOR_H_

#include <memory>
#include <memory_resource>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "allocator/common/mutex.h"
#include "allocator/policy/tag_interner.h"
#include "allocator/resource/allocation_recorder.h"
#include "allocator/resource/memory_resource.h"

namespace gpualloc {

struct TrackingOptions {
  bool capture_stacks = false;
  int max_frames = 12;
  // A table of its own even over an upstream with a recorder: lists only the
  // allocations made through this adaptor. (Stacks always need one.)
  bool own_table = false;
  // Where the live table, the stack table and the tag set keep their nodes.
  // Null: new/delete. Must outlive the adaptor. If it throws
  // std::bad_alloc, Allocate fails with ResourceExhausted, gives the
  // upstream allocation back and tracks nothing; a Deallocate whose upstream
  // free fails keeps its entry without allocating.
  std::pmr::memory_resource* metadata_resource = nullptr;
};

struct TrackedAllocation : RecordedAllocation {
  std::vector<void*> stack;     // empty unless capture_stacks
};

class TrackingAdaptor final : public MemoryResource {
 public:
  TrackingAdaptor(std::shared_ptr<MemoryResource> upstream, TrackingOptions options = {});

  absl::string_view name() const override { return "tracking"; }
  DeviceIndex device() const override { return device_; }
  std::size_t alignment() const override { return upstream_->alignment(); }
  MemoryStats stats() const override { return upstream_->stats(); }

  // A copy of the live table, oldest first.
  std::vector<TrackedAllocation> Live() const;
  std::size_t live_count() const;
  // "No leaks." or the live allocations grouped by tag and call site, the
  // largest groups first, each with a count, bytes and (with stacks) the
  // symbolised frames.
  std::string Report() const;

 private:
  absl::StatusOr<Allocation> DoAllocate(std::size_t bytes, Stream stream) override;
  absl::Status DoDeallocate(const Allocation& allocation, Stream stream) override;

  // What the table keeps per live allocation: small and trivially copied, so
  // tracking adds little to each call. Tags are interned; stacks, when
  // captured, live in their own map.
  struct Entry {
    Allocation allocation;
    std::uint64_t sequence = 0;
    const std::pmr::string* tag = nullptr;  // owned by tags_; null: untagged
  };

  const std::shared_ptr<MemoryResource> upstream_;
  const DeviceIndex device_;  // the upstream's: checked on every call
  const TrackingOptions options_;
  // The upstream's recorder, when it is used instead of the tables below.
  AllocationRecorder* const recorder_;
  mutable Mutex mu_;
  // Node-based standard tables: an insert that throws leaves them as they
  // were (Abseil's flat tables are left corrupt), and a failed free puts its
  // extracted nodes back without allocating.
  std::pmr::unordered_map<void*, Entry> live_ ABSL_GUARDED_BY(mu_);
  std::pmr::unordered_map<void*, std::vector<void*>> stacks_  // capture_stacks only
      ABSL_GUARDED_BY(mu_);
  TagInterner tags_ ABSL_GUARDED_BY(mu_);
  std::uint64_t next_sequence_ ABSL_GUARDED_BY(mu_) = 0;
};

// Reports `tracker`'s leaks on stderr once: when this registration is
// destroyed (its owner is done with the allocator, so whatever is still live
// is leaked) or at process exit, whichever comes first. It holds the tracker
// weakly, so it never keeps an allocator, or the device memory it reserved,
// alive. The default context's allocators live to the end, so theirs is
// reported at exit. Thread-safe.
class LeakReportAtExit {
 public:
  explicit LeakReportAtExit(std::shared_ptr<TrackingAdaptor> tracker);
  ~LeakReportAtExit();
  LeakReportAtExit(const LeakReportAtExit&) = delete;
  LeakReportAtExit& operator=(const LeakReportAtExit&) = delete;

 private:
  const std::weak_ptr<TrackingAdaptor> tracker_;
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_OBSERVE_TRACKING_ADAPTOR_H_
