#include "harness/concurrency/scheduled_scenario.h"

#include <cmath>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "allocator/backend/sim/sim_backend.h"
#include "allocator/caching/caching_allocator.h"
#include "allocator/common/mutex.h"
#include "allocator/common/status_macros.h"
#include "harness/invariants/invariants.h"
#include "harness/testing/planted_bug_resource.h"

namespace gpualloc::harness {
namespace {

constexpr std::size_t kCheckedBytes = std::size_t{64} << 10;  // filled and verified per allocation
constexpr std::size_t kScratchBytes = 256;   // each thread's own buffer for queued work
constexpr int kBacklog = 3;                  // tasks queued ahead of each use

struct Entry {
  Allocation allocation;
  unsigned char fill = 0;
  std::size_t checked = 0;
};

enum Op : std::uint64_t { kAllocate, kFree, kUse, kSync, kEmpty };

class Scenario {
 public:
  Scenario(DeterministicScheduler& scheduler, const ScheduledScenarioOptions& options)
      : scheduler_(scheduler), options_(options) {}

  absl::Status Run() {
    SimOptions sim_options = SimOptions::WithDevices(1, std::size_t{256} << 20);
    sim_options.scheduler = &scheduler_;
    backend_ = std::make_shared<SimBackend>(sim_options);
    CachingOptions caching;
    caching.cross_stream = options_.cross_stream;
    caching.expandable_segments = options_.expandable_segments;
    caching.front_cache_blocks = options_.front_cache_blocks;
    auto created = CachingAllocator::Create(backend_, 0, caching);
    if (!created.ok()) return created.status();
    allocator_ = std::move(*created);
    top_ = allocator_;
    if (options_.plant_overlap_bug) {
      auto planted = std::make_shared<PlantedBugResource>(allocator_);
      planted->Arm();
      top_ = std::move(planted);
    }

    std::vector<Stream> streams;
    std::vector<void*> scratch;
    for (int t = 0; t < options_.threads; ++t) {
      auto stream = backend_->CreateStream(0);
      if (!stream.ok()) return stream.status();
      streams.push_back(*stream);
      auto buffer = backend_->Malloc(0, kScratchBytes);
      if (!buffer.ok()) return buffer.status();
      scratch.push_back(*buffer);
    }
    {
      std::vector<DeterministicScheduler::Thread> threads;
      for (int t = 0; t < options_.threads; ++t) {
        threads.push_back(scheduler_.Spawn(
            absl::StrFormat("thread %d", t),
            [this, t, stream = streams[t], buffer = scratch[t]] { Worker(t, stream, buffer); }));
      }
    }  // joined

    for (Entry& e : pool_) Fail(-1, "final free", Free(e));
    pool_.clear();
    Fail(-1, "device synchronize", backend_->DeviceSynchronize(0));
    Fail(-1, "snapshot invariants", CheckSnapshot(allocator_->Snapshot()));
    const MemoryStats stats = allocator_->stats();
    if (stats.allocated_bytes.current != 0 || stats.active_blocks.current != 0) {
      Fail(-1, "stats", absl::FailedPreconditionError(absl::StrFormat(
                            "%d bytes in %d blocks still counted after every free",
                            stats.allocated_bytes.current, stats.active_blocks.current)));
    }
    top_.reset();
    allocator_.reset();
    // The checker's verdict is part of every explored schedule.
    Fail(-1, "stream order", CheckStreamOrder(*backend_));
    scheduler_.Mix(backend_->Accounting().stream_order.violations);
    for (Stream s : streams) Fail(-1, "destroy stream", backend_->DestroyStream(s));
    for (void* p : scratch) Fail(-1, "free scratch", backend_->Free(0, p));
    const SimAccounting accounting = backend_->Accounting();
    if (!accounting.AllReleased()) {
      Fail(-1, "teardown", absl::FailedPreconditionError("the device still holds: " +
                                                         accounting.Describe()));
    }
    backend_.reset();
    std::lock_guard<std::mutex> lock(error_mu_);
    return first_error_;
  }

 private:
  void Worker(int t, Stream stream, void* scratch) {
    std::mt19937_64 rng(scheduler_.options().seed * 1000003 + static_cast<std::uint64_t>(t));
    for (int i = 0; i < options_.ops_per_thread; ++i) {
      const std::uint64_t dice = rng() % 100;
      const Op op = dice < 40 ? kAllocate : dice < 72 ? kFree : dice < 90 ? kUse
                    : dice < 97 ? kSync : kEmpty;
      absl::Status status;
      switch (op) {
        case kAllocate:
          status = AllocateAndFill(rng, stream);
          break;
        case kFree:
          if (auto e = Take(rng)) status = Free(*e);
          break;
        case kUse:
          if (auto e = Take(rng)) {
            status = Use(*e, stream, scratch, /*record=*/rng() % 2 == 0);
            Put(*e);
          }
          break;
        case kSync:
          status = backend_->SynchronizeStream(stream);
          break;
        case kEmpty:
          status = allocator_->EmptyCache();
          break;
      }
      scheduler_.Mix(op << 8 | static_cast<std::uint64_t>(status.code()));
      Fail(t, absl::StrFormat("operation %d (%s)", i, OpName(op)), status);
    }
  }

  static const char* OpName(Op op) {
    static const char* const kNames[] = {"allocate", "free", "use on another stream", "sync",
                                         "empty cache"};
    return kNames[op];
  }

  absl::Status AllocateAndFill(std::mt19937_64& rng, Stream stream) {
    // Log-uniform 256 B .. 256 KiB: small-pool blocks, split and reused often.
    const double exponent = 8 + static_cast<double>(rng() % 1000) / 1000.0 * 10;
    const auto bytes = static_cast<std::size_t>(std::exp2(exponent));
    absl::StatusOr<Allocation> a = top_->Allocate(bytes, stream);
    if (!a.ok()) return a.status();
    Entry e{*a, static_cast<unsigned char>(1 + rng() % 255), std::min(bytes, kCheckedBytes)};
    // In stream order, like a kernel initialising its output.
    absl::Status status = backend_->MemsetAsync(e.allocation.ptr, e.fill, e.checked, stream);
    if (status.ok()) status = backend_->SynchronizeStream(stream);
    Put(e);
    return status;
  }

  absl::Status Order(Stream from, Stream to) { return OrderStreams(*backend_, from, to); }

  // A read on `stream`; on another stream than the allocation's, the
  // allocator hears of it (RecordStream) or the allocation's stream waits
  // for it afterwards (an event back), as a program would do either.
  absl::Status Use(const Entry& e, Stream stream, void* scratch, bool record) {
    const bool elsewhere = stream != e.allocation.stream;
    if (elsewhere && record) {
      GPUALLOC_RETURN_IF_ERROR(allocator_->RecordStream(e.allocation, stream));
    }
    // Work already queued ahead, as on a busy stream: the use may run late.
    for (int i = 0; i < kBacklog; ++i) {
      GPUALLOC_RETURN_IF_ERROR(backend_->MemsetAsync(scratch, i, kScratchBytes, stream));
    }
    // Reads it, as a kernel on a side stream does: several streams may read at
    // once; the allocator must not hand the block on before they are done
    // (the stream-order checker reports a reuse that is not ordered after it).
    GPUALLOC_RETURN_IF_ERROR(backend_->LaunchKernel(
        stream, {{e.allocation.ptr, e.checked, AccessMode::kRead, 0}}, 0, "side-stream read"));
    return elsewhere && !record ? Order(stream, e.allocation.stream) : absl::OkStatus();
  }

  absl::Status Free(const Entry& e) {
    std::vector<unsigned char> seen(e.checked);
    GPUALLOC_RETURN_IF_ERROR(
        backend_->Memcpy(seen.data(), e.allocation.ptr, e.checked, CopyKind::kDeviceToHost));
    for (std::size_t i = 0; i < seen.size(); ++i) {
      if (seen[i] != e.fill) {
        return absl::DataLossError(absl::StrFormat(
            "allocation of %d bytes on stream %d: byte %d is %d, expected its fill %d (someone "
            "wrote into it while it was live)",
            e.allocation.bytes, e.allocation.stream.handle, i, seen[i], e.fill));
      }
    }
    // A last read still queued on its stream when the block is freed.
    GPUALLOC_RETURN_IF_ERROR(backend_->LaunchKernel(
        e.allocation.stream, {{e.allocation.ptr, e.checked, AccessMode::kRead, 0}}, 0,
        "last read"));
    return top_->Deallocate(e.allocation);
  }

  std::optional<Entry> Take(std::mt19937_64& rng) {
    MutexLock lock(pool_mu_);
    if (pool_.empty()) return std::nullopt;
    // Half the time the newest entry: memory used and then freed soon after,
    // as a tensor handed to a side stream often is.
    const std::size_t index = rng() % 2 ? pool_.size() - 1 : rng() % pool_.size();
    Entry e = pool_[index];
    pool_[index] = pool_.back();
    pool_.pop_back();
    return e;
  }

  void Put(const Entry& e) {
    MutexLock lock(pool_mu_);
    pool_.push_back(e);
  }

  void Fail(int thread, const std::string& what, const absl::Status& status) {
    if (status.ok() || absl::IsResourceExhausted(status)) return;  // OOM is an answer
    std::lock_guard<std::mutex> lock(error_mu_);
    if (!first_error_.ok()) return;
    first_error_ = absl::Status(
        status.code(), thread < 0 ? absl::StrFormat("main, %s: %s", what, status.message())
                                  : absl::StrFormat("thread %d, %s: %s", thread, what,
                                                    status.message()));
  }

  DeterministicScheduler& scheduler_;
  const ScheduledScenarioOptions options_;
  std::shared_ptr<SimBackend> backend_;
  std::shared_ptr<CachingAllocator> allocator_;
  std::shared_ptr<MemoryResource> top_;  // the allocator, or the planted bug over it
  Mutex pool_mu_;  // a scheduling point, like the allocator's own locks
  std::vector<Entry> pool_;
  std::mutex error_mu_;  // never held across a scheduling point
  absl::Status first_error_;
};

}  // namespace

ScheduledScenarioOutcome RunScheduledScenario(const ScheduleOptions& schedule,
                                              const ScheduledScenarioOptions& options) {
  DeterministicScheduler scheduler(schedule);
  ScheduledScenarioOutcome outcome;
  outcome.schedule = scheduler.Run([&] { outcome.status = Scenario(scheduler, options).Run(); });
  return outcome;
}

}  // namespace gpualloc::harness
