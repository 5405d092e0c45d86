// OpInterpreter: runs Ops against a CachingAllocator over a FailpointBackend
// over a SimBackend, and after every op checks the allocator against a simple
// reference model (the live allocations and their bytes), the shared
// invariants (harness/invariants) and the content cookies. At Finish() every
// allocation is freed, the cache emptied, and the sim's own accounting must
// say nothing is outstanding.
//
// Memory is used on streams as a GPU program uses it: written and checked in
// its allocation stream's order, used on other streams after an event and a
// stream wait (then RecordStream, or an event back), freed with kernels still
// queued, pinned blocks used as async copy sources and destinations and freed
// while the copies are in flight, staging buffers and keyed buffers returned
// to their pools with copies and kernels in flight and handed to other
// streams. The sim's stream-order checker's verdict is part of every Check().
//
// Expected failures (out of memory, an injected fault surfacing, a limit
// refusing) are not violations: the model simply records no change, and the
// allocator must show none either (strong guarantee).
#ifndef GPUALLOC_HARNESS_OPS_INTERPRETER_H_
#define GPUALLOC_HARNESS_OPS_INTERPRETER_H_

#include <memory>
#include <optional>
#include <utility>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "allocator/backend/failpoints/failpoint_backend.h"
#include "allocator/backend/sim/sim_backend.h"
#include "allocator/caching/caching_allocator.h"
#include "allocator/host/pinned_host_allocator.h"
#include <deque>

#include "allocator/bridge/ring_buffer_bridge.h"
#include "allocator/pools/keyed_buffer_cache.h"
#include "allocator/pools/staging_buffer_pool.h"
#include "allocator/streams/stream_pool.h"
#include "harness/invariants/device_reads.h"
#include "harness/invariants/invariants.h"
#include "harness/ops/ops.h"

namespace gpualloc::harness {

// Which allocator stack the ops run against; the caching allocator is always
// at the bottom, and its structural invariants are checked whatever is on top.
enum class InterpreterStack { kCaching, kSizeClassOverCaching, kArenaOverCaching };

struct InterpreterOptions {
  std::size_t device_capacity = std::size_t{96} << 20;  // of each of the two devices
  int streams = 3;  // including the default stream
  CachingOptions caching;
  InterpreterStack stack = InterpreterStack::kCaching;
  std::uint64_t seed = 1;
  // A real device to run on instead of the two simulated ones (null: the
  // sim). Device work becomes memsets and copies; the leak check uses the
  // device's free memory; the stream-order checker and the sim's accounting
  // are the sim's alone. Uses device 0, and device 1 where there is one.
  std::shared_ptr<Backend> device;
};

class OpInterpreter {
 public:
  explicit OpInterpreter(InterpreterOptions options = {});
  ~OpInterpreter();

  // FailedPrecondition describing the broken invariant, with the ops so far.
  absl::Status Apply(const Op& op);
  absl::Status Finish();

  std::size_t live_count() const { return live_.size(); }
  CachingAllocator& allocator() { return *cache_; }
  // The simulated device, or null over a real one.
  SimBackend* sim() { return sim_.get(); }
  // The device everything runs on (the sim, or options.device).
  Backend& device() { return *device_; }
  // The fault injector every allocator call goes through (campaigns arm it).
  FailpointBackend& failpoints() { return *faulty_; }

 private:
  struct Live {
    Allocation allocation;
    std::uint64_t cookie;
    // Streams that read it after waiting for its stream, known to the
    // allocator by RecordStream but not waited for by its stream since.
    std::vector<Stream> readers;
  };
  // Orders `to` after every reader of `l` (before `to` writes it).
  absl::Status JoinReaders(Live& l, Stream to);
  struct LivePinned {
    PinnedBlock block;
    std::optional<Stream> used_on;  // last stream an async copy used it on
  };
  // Kernel-length stream work, so memory changes hands with work in flight.
  static constexpr std::int64_t kWorkNs = 20'000;
  // The bytes of an allocation past its cookie (free for stream work).
  static std::pair<void*, std::size_t> WorkRegion(const Allocation& a);
  // Records an event on `from` and makes `to` wait for it (the user's side
  // of the stream contract; straight on the sim, never faulted).
  absl::Status Order(Stream from, Stream to);
  absl::Status Check();
  absl::Status Violation(const absl::Status& st) const;
  Stream StreamAt(std::uint64_t i) const { return streams_[i % streams_.size()]; }

  // Device work on `on` over [p, p+n): a kernel on the sim; a memset
  // (write) or a copy into scratch memory (read) on a real device.
  absl::Status Work(Stream on, void* p, std::size_t n, AccessMode mode, std::int64_t ns,
                    const char* name);

  InterpreterOptions options_;
  std::shared_ptr<SimBackend> sim_;     // null over a real device
  std::shared_ptr<Backend> device_;     // sim_ or options_.device
  int devices_ = 2;                     // how many of the device's indices ops use
  std::size_t free_before_ = 0;         // a real device's free bytes at the start
  std::unique_ptr<DeviceReads> reads_;  // a real device's reads (up to 1 MiB each)
  std::shared_ptr<FailpointBackend> faulty_;
  std::shared_ptr<CachingAllocator> cache_;
  std::shared_ptr<MemoryResource> top_;  // what allocations go through
  std::unique_ptr<PinnedHostAllocator> pinned_;
  // The pools, each over allocators of its own, so the models of the cache
  // and of pinned_ stay exact; their own memory is checked against them.
  std::shared_ptr<PinnedHostAllocator> staging_pinned_;
  std::shared_ptr<StagingBufferPool> staging_;
  std::shared_ptr<CachingAllocator> keyed_memory_;
  std::shared_ptr<PinnedHostAllocator> keyed_pinned_;
  std::shared_ptr<KeyedBufferCache> keyed_;
  // One ring-buffer bridge per transfer strategy, and the messages each
  // has been given and not yet handed back (the model), oldest first.
  struct BridgeUnderTest {
    std::unique_ptr<RingBufferBridge> bridge;
    std::deque<std::uint64_t> in_flight;
  };
  std::vector<BridgeUnderTest> bridges_;
  std::shared_ptr<CachingAllocator> bridge_memory_;
  // Device 1's allocator and a stream of it, for peer copies (a sim or a
  // real host with two devices).
  std::shared_ptr<CachingAllocator> peer_cache_;
  Stream peer_stream_;
  std::shared_ptr<PinnedHostAllocator> bridge_pinned_;
  std::vector<LivePinned> pinned_live_;
  std::unique_ptr<StreamPool> stream_pool_;  // where streams_ (but the default) come from
  std::vector<Stream> streams_;
  std::vector<Live> live_;
  LiveSet shadow_;
  std::vector<Op> history_;
  std::uint64_t next_cookie_;
  std::uint64_t faults_seen_ = 0;
  bool limit_check_suspended_ = false;
  bool finished_ = false;
};

}  // namespace gpualloc::harness

#endif  // GPUALLOC_HARNESS_OPS_INTERPRETER_H_
