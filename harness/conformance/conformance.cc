#include "harness/conformance/conformance.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "allocator/common/status_macros.h"
#include "harness/invariants/device_reads.h"
#include "harness/invariants/invariants.h"

namespace gpualloc::harness {

void ResourceConformance::SetUp() {
  under_test_ = GetParam().make();
  ASSERT_TRUE(under_test_.resource) << "the factory made no resource";
  if (!under_test_.device) under_test_.device = under_test_.sim;
  ASSERT_TRUE(under_test_.device) << "the factory named no device (sim or device)";
  if (!under_test_.sim) {
    absl::StatusOr<MemoryInfo> info = device().GetMemoryInfo(resource().device());
    ASSERT_TRUE(info.ok()) << info.status();
    free_before_ = info->free_bytes;
  }
}

void ResourceConformance::TearDown() {
  if (!under_test_.resource) return;
  if (under_test_.release_cache) {
    EXPECT_TRUE(under_test_.release_cache().ok());
  }
  EXPECT_EQ(resource().stats().allocated_bytes.current, 0) << "allocations left live";
  const DeviceIndex index = resource().device();
  under_test_.resource.reset();
  if (!under_test_.sim) {
    // A real device has no accounting of ours: its free memory must be back
    // where it was, within what the runtime itself may keep (a few MiB).
    ASSERT_TRUE(device().DeviceSynchronize(index).ok());
    absl::StatusOr<MemoryInfo> info = device().GetMemoryInfo(index);
    ASSERT_TRUE(info.ok()) << info.status();
    constexpr std::size_t kRuntimeSlack = 64u << 20;
    EXPECT_GE(info->free_bytes + kRuntimeSlack, free_before_)
        << "device memory not given back: " << (free_before_ - info->free_bytes) << " bytes";
  }
  if (under_test_.sim) {
    // Whatever the case did, nothing was reused, unmapped or overwritten
    // while queued work could still touch it.
    absl::Status ordered = CheckStreamOrder(*under_test_.sim);
    EXPECT_TRUE(ordered.ok()) << ordered;
    const SimAccounting acc = under_test_.sim->Accounting();
    EXPECT_EQ(acc.guard_violations, 0u);
    for (const auto& d : acc.devices) {
      EXPECT_EQ(d.device_bytes, 0u) << "device memory leaked: " << acc.Describe();
      EXPECT_EQ(d.pinned_bytes, 0u) << "pinned memory leaked: " << acc.Describe();
    }
  }
}

namespace {

Stream Default(MemoryResource& r) { return Stream::Default(r.device()); }

TEST_P(ResourceConformance, AllocationsAreAlignedAndUsable) {
  for (std::size_t bytes : {1u, 7u, 256u, 1000u, 4096u, 65537u, 1u << 20}) {
    absl::StatusOr<Allocation> a = resource().Allocate(bytes);
    ASSERT_TRUE(a.ok()) << bytes << ": " << a.status();
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(a->ptr) % resource().alignment(), 0u) << bytes;
    EXPECT_EQ(a->bytes, bytes);
    EXPECT_EQ(a->device(), resource().device());
    EXPECT_TRUE(resource().Deallocate(*a).ok());
  }
}

TEST_P(ResourceConformance, ZeroAndAbsurdSizesAreErrorsNotCrashes) {
  EXPECT_EQ(resource().Allocate(0).status().code(), absl::StatusCode::kInvalidArgument);
  for (std::size_t absurd : {std::size_t{1} << 62, ~std::size_t{0}, ~std::size_t{0} - 255}) {
    absl::StatusOr<Allocation> a = resource().Allocate(absurd);
    EXPECT_FALSE(a.ok());
    EXPECT_NE(a.status().code(), absl::StatusCode::kInternal) << a.status();
  }
  absl::StatusOr<Allocation> after = resource().Allocate(256);
  ASSERT_TRUE(after.ok()) << "the resource still works after refusing: " << after.status();
  EXPECT_TRUE(resource().Deallocate(*after).ok());
}

TEST_P(ResourceConformance, LiveAllocationsNeverOverlapAndKeepTheirData) {
  std::mt19937_64 rng(11);
  LiveSet live;
  std::map<void*, std::uint64_t> cookies;
  std::vector<Allocation> all;
  for (int i = 0; i < 200; ++i) {
    absl::StatusOr<Allocation> a = resource().Allocate(1 + rng() % (256 * 1024));
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(live.Add(*a, resource().alignment()).ok());
    cookies[a->ptr] = rng();
    ASSERT_TRUE(WriteCookie(device(), *a, cookies[a->ptr], std::min<std::size_t>(a->bytes, 512)).ok());
    all.push_back(*a);
    if (rng() % 3 == 0) {  // free one at random
      const std::size_t k = rng() % all.size();
      ASSERT_TRUE(VerifyCookie(device(), all[k], cookies[all[k].ptr],
                               std::min<std::size_t>(all[k].bytes, 512)).ok());
      ASSERT_TRUE(resource().Deallocate(all[k]).ok());
      ASSERT_TRUE(live.Remove(all[k]).ok());
      all[k] = all.back();
      all.pop_back();
    }
  }
  for (const Allocation& a : all) {
    ASSERT_TRUE(VerifyCookie(device(), a, cookies[a.ptr], std::min<std::size_t>(a.bytes, 512)).ok());
    ASSERT_TRUE(resource().Deallocate(a).ok());
  }
}

TEST_P(ResourceConformance, FreesOnAnotherStreamAndFromAnotherThreadWork) {
  Stream other = device().CreateStream(resource().device()).value();
  absl::StatusOr<Allocation> a = resource().Allocate(4096, Default(resource()));
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(resource().Deallocate(*a, other).ok());
  absl::StatusOr<Allocation> b = resource().Allocate(4096, other);
  ASSERT_TRUE(b.ok());
  absl::Status from_thread;
  std::thread([&] { from_thread = resource().Deallocate(*b); }).join();
  EXPECT_TRUE(from_thread.ok()) << from_thread;
  ASSERT_TRUE(device().SynchronizeStream(other).ok());
  ASSERT_TRUE(device().DestroyStream(other).ok());
}

// --- stream order ------------------------------------------------------------
// The work the stream cases enqueue, and how their verdict is reached.
//  - On the sim: kernels that take simulated time, so memory changes hands
//    with work in flight; the stream-order checker judges every access, and
//    its verdict does not depend on timing.
//  - On a real device: memsets (writes) and copies into scratch memory
//    (reads). Hold() puts a host function on a stream that blocks the
//    stream's later work until ReleaseAll() (or a deadline, so an allocator
//    that waits on the host cannot hang the test), so the old work is still
//    queued when memory changes hands. Contents read back afterwards judge
//    the order: memory reused without waiting shows the late old write, and
//    a read overtaken by a new owner's write shows the new fill.
constexpr std::int64_t kKernelNs = 200'000;

class DeviceWork {
 public:
  DeviceWork(Backend& device, SimBackend* sim, DeviceIndex index)
      : device_(device), sim_(sim), index_(index), reads_(device, ~std::size_t{0}) {}
  DeviceWork(const DeviceWork&) = delete;
  DeviceWork& operator=(const DeviceWork&) = delete;
  ~DeviceWork() {
    ReleaseAll();
    (void)device_.DeviceSynchronize(index_);  // host functions done with their gates
  }

  bool real() const { return sim_ == nullptr; }

  absl::Status Write(const Allocation& a, Stream s, unsigned char fill) {
    if (!real()) {
      return sim_->LaunchKernel(s, {{a.ptr, a.bytes, AccessMode::kWrite, fill}}, kKernelNs, "write");
    }
    return device_.MemsetAsync(a.ptr, fill, a.bytes, s);
  }

  // Reads all of `a` on `s` (into `s`'s scratch memory on a real device).
  absl::Status Read(const Allocation& a, Stream s) {
    if (!real()) {
      return sim_->LaunchKernel(s, {{a.ptr, a.bytes, AccessMode::kRead, 0}}, kKernelNs, "read");
    }
    return reads_.Read(s, a.ptr, a.bytes);
  }

  // Holds `s`'s later work back (real device only; the sim needs no help).
  absl::Status Hold(Stream s) {
    if (!real()) return absl::OkStatus();
    auto gate = std::make_unique<Gate>();
    const absl::Status held = device_.LaunchHostFunc(s, &Gate::Wait, gate.get());
    // A runtime without host functions (HIP 5.2 does not export them): the
    // case still runs and reads contents back, with no work held in flight.
    if (held.code() == absl::StatusCode::kUnimplemented) return absl::OkStatus();
    GPUALLOC_RETURN_IF_ERROR(held);
    gates_.push_back(std::move(gate));
    return absl::OkStatus();
  }

  void ReleaseAll() {
    for (auto& gate : gates_) gate->Open();
  }

  // Real device: after all work, `a` holds `fill` in every byte.
  absl::Status ExpectContents(const Allocation& a, unsigned char fill) {
    if (!real()) return absl::OkStatus();
    GPUALLOC_RETURN_IF_ERROR(device_.DeviceSynchronize(index_));
    std::vector<unsigned char> seen(a.bytes);
    GPUALLOC_RETURN_IF_ERROR(device_.Memcpy(seen.data(), a.ptr, a.bytes, CopyKind::kDeviceToHost));
    return FirstMismatch(seen, fill, "allocation");
  }

  // Real device: the last Read on `s` saw `fill` in every byte.
  absl::Status ExpectLastRead(Stream s, unsigned char fill) {
    if (!real()) return absl::OkStatus();
    absl::StatusOr<std::vector<unsigned char>> seen = reads_.LastRead(s);
    GPUALLOC_RETURN_IF_ERROR(seen.status());
    return FirstMismatch(*seen, fill, "read");
  }

 private:
  // Blocks a stream (from a runtime thread) until opened, or for at most
  // kDeadline: an allocator that waits on the host for the held stream (a
  // synchronous cudaFree) is slowed, never hung.
  struct Gate {
    static constexpr auto kDeadline = std::chrono::seconds(2);
    std::mutex mu;
    std::condition_variable cv;
    bool open = false;
    void Open() {
      std::lock_guard<std::mutex> lock(mu);
      open = true;
      cv.notify_all();
    }
    static void Wait(void* self) {
      auto* gate = static_cast<Gate*>(self);
      std::unique_lock<std::mutex> lock(gate->mu);
      gate->cv.wait_for(lock, kDeadline, [gate] { return gate->open; });
    }
  };

  static absl::Status FirstMismatch(const std::vector<unsigned char>& seen, unsigned char fill,
                                    const char* what) {
    for (std::size_t i = 0; i < seen.size(); ++i) {
      if (seen[i] != fill) {
        return absl::DataLossError(absl::StrFormat(
            "%s byte %d is %d, expected %d: work of another owner ran out of stream order",
            what, i, seen[i], fill));
      }
    }
    return absl::OkStatus();
  }

  Backend& device_;
  SimBackend* sim_;
  DeviceIndex index_;
  DeviceReads reads_;  // a real device's reads
  std::vector<std::unique_ptr<Gate>> gates_;
};

TEST_P(ResourceConformance, FreedWithWorkQueuedAndReusedOnTheSameStream) {
  DeviceWork work(device(), under_test_.sim.get(), resource().device());
  const Stream s = device().CreateStream(resource().device()).value();
  ASSERT_TRUE(work.Hold(s).ok());
  std::optional<Allocation> last;
  for (int round = 0; round < 8; ++round) {
    absl::StatusOr<Allocation> a = resource().Allocate(64 * 1024, s);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(work.Write(*a, s, static_cast<unsigned char>(round)).ok());
    if (round == 7) {
      last = *a;
      break;
    }
    ASSERT_TRUE(resource().Deallocate(*a, s).ok());  // the write is still queued
  }
  work.ReleaseAll();
  const absl::Status contents = work.ExpectContents(*last, 7);
  EXPECT_TRUE(contents.ok()) << contents;
  ASSERT_TRUE(resource().Deallocate(*last, s).ok());
  ASSERT_TRUE(device().SynchronizeStream(s).ok());
  ASSERT_TRUE(device().DestroyStream(s).ok());
}

TEST_P(ResourceConformance, ReuseOnAnotherStreamIsOrderedAfterTheOldWork) {
  DeviceWork work(device(), under_test_.sim.get(), resource().device());
  const Stream s = device().CreateStream(resource().device()).value();
  const Stream t = device().CreateStream(resource().device()).value();
  for (std::size_t bytes : {512u, 64u * 1024, 3u << 20}) {
    ASSERT_TRUE(work.Hold(s).ok());  // s's writes stay queued past the frees
    std::vector<Allocation> on_s;
    for (int i = 0; i < 4; ++i) {
      absl::StatusOr<Allocation> a = resource().Allocate(bytes, s);
      ASSERT_TRUE(a.ok()) << a.status();
      ASSERT_TRUE(work.Write(*a, s, 1).ok());
      on_s.push_back(*a);
    }
    for (const Allocation& a : on_s) ASSERT_TRUE(resource().Deallocate(a, s).ok());
    // Whatever t gets, its writes must come after s's (a wait, or new memory).
    std::vector<Allocation> on_t;
    for (int i = 0; i < 4; ++i) {
      absl::StatusOr<Allocation> b = resource().Allocate(bytes, t);
      ASSERT_TRUE(b.ok()) << b.status();
      ASSERT_TRUE(work.Write(*b, t, 2).ok());
      on_t.push_back(*b);
    }
    work.ReleaseAll();
    for (const Allocation& b : on_t) {
      const absl::Status contents = work.ExpectContents(b, 2);
      EXPECT_TRUE(contents.ok()) << bytes << ": " << contents;
    }
    for (const Allocation& b : on_t) ASSERT_TRUE(resource().Deallocate(b, t).ok());
  }
  for (Stream x : {s, t}) {
    ASSERT_TRUE(device().SynchronizeStream(x).ok());
    ASSERT_TRUE(device().DestroyStream(x).ok());
  }
}

TEST_P(ResourceConformance, UsedOnSeveralStreamsItIsReusedOnlyAfterAllOfThem) {
  DeviceWork work(device(), under_test_.sim.get(), resource().device());
  const Stream s = device().CreateStream(resource().device()).value();
  const Stream t = device().CreateStream(resource().device()).value();
  const Stream u = device().CreateStream(resource().device()).value();
  for (int round = 0; round < 4; ++round) {
    absl::StatusOr<Allocation> a = resource().Allocate(256 * 1024, s);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(work.Write(*a, s, 1).ok());
    for (Stream other : {t, u}) {
      ASSERT_TRUE(OrderStreams(device(), s, other).ok());  // read only after the write
      ASSERT_TRUE(work.Hold(other).ok());                  // the reads stay queued
      ASSERT_TRUE(work.Read(*a, other).ok());
      if (under_test_.record_stream) {
        ASSERT_TRUE(under_test_.record_stream(*a, other).ok());
      } else {
        ASSERT_TRUE(OrderStreams(device(), other, s).ok());  // the free follows the reads
      }
    }
    ASSERT_TRUE(resource().Deallocate(*a, s).ok());
    std::vector<std::pair<Allocation, Stream>> next_owners;
    for (Stream next : {s, t, u}) {
      absl::StatusOr<Allocation> b = resource().Allocate(256 * 1024, next);
      ASSERT_TRUE(b.ok()) << b.status();
      ASSERT_TRUE(work.Write(*b, next, 3).ok());
      next_owners.emplace_back(*b, next);
    }
    work.ReleaseAll();
    for (Stream reader : {t, u}) {
      const absl::Status read = work.ExpectLastRead(reader, 1);
      EXPECT_TRUE(read.ok()) << "round " << round << ": " << read;
    }
    for (const auto& [b, next] : next_owners) ASSERT_TRUE(resource().Deallocate(b, next).ok());
  }
  for (Stream x : {s, t, u}) {
    ASSERT_TRUE(device().SynchronizeStream(x).ok());
    ASSERT_TRUE(device().DestroyStream(x).ok());
  }
}

TEST_P(ResourceConformance, FreedOnARecordedStreamItStillWaitsForItsOwnStream) {
  if (!under_test_.record_stream) GTEST_SKIP() << "for resources with RecordStream";
  DeviceWork work(device(), under_test_.sim.get(), resource().device());
  const Stream s = device().CreateStream(resource().device()).value();
  const Stream t = device().CreateStream(resource().device()).value();
  absl::StatusOr<Allocation> a = resource().Allocate(128 * 1024, s);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(work.Write(*a, s, 1).ok());
  ASSERT_TRUE(OrderStreams(device(), s, t).ok());
  ASSERT_TRUE(work.Read(*a, t).ok());
  ASSERT_TRUE(under_test_.record_stream(*a, t).ok());
  ASSERT_TRUE(work.Hold(s).ok());
  ASSERT_TRUE(work.Read(*a, s).ok());             // s still reads after t is done
  ASSERT_TRUE(resource().Deallocate(*a, t).ok());  // freed on t
  absl::StatusOr<Allocation> b = resource().Allocate(128 * 1024, t);
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_TRUE(work.Write(*b, t, 2).ok());
  work.ReleaseAll();
  const absl::Status read = work.ExpectLastRead(s, 1);
  EXPECT_TRUE(read.ok()) << read;
  ASSERT_TRUE(resource().Deallocate(*b, t).ok());
  for (Stream x : {s, t}) {
    ASSERT_TRUE(device().SynchronizeStream(x).ok());
    ASSERT_TRUE(device().DestroyStream(x).ok());
  }
}

TEST_P(ResourceConformance, ManyThreadsAllocateAndFreeConcurrently) {
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      std::vector<Allocation> mine;
      for (int i = 0; i < 200; ++i) {
        if (mine.size() < 16 && rng() % 2) {
          absl::StatusOr<Allocation> a = resource().Allocate(1 + rng() % 65536);
          if (a.ok()) {
            mine.push_back(*a);
          } else {
            ++failures;
          }
        } else if (!mine.empty()) {
          if (!resource().Deallocate(mine.back()).ok()) ++failures;
          mine.pop_back();
        }
      }
      for (const Allocation& a : mine) {
        if (!resource().Deallocate(a).ok()) ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(resource().stats().allocated_bytes.current, 0);
}

TEST_P(ResourceConformance, StatsTrackWhatIsAllocated) {
  const MemoryStats before = resource().stats();
  absl::StatusOr<Allocation> a = resource().Allocate(10000);
  ASSERT_TRUE(a.ok());
  const MemoryStats during = resource().stats();
  EXPECT_GE(during.allocated_bytes.current - before.allocated_bytes.current, 10000);
  EXPECT_EQ(during.active_blocks.current, before.active_blocks.current + 1);
  EXPECT_GE(during.reserved_bytes.current, during.allocated_bytes.current);
  EXPECT_GE(during.allocated_bytes.peak, during.allocated_bytes.current);
  ASSERT_TRUE(resource().Deallocate(*a).ok());
  const MemoryStats after = resource().stats();
  EXPECT_EQ(after.allocated_bytes.current, before.allocated_bytes.current);
  EXPECT_EQ(after.active_blocks.current, before.active_blocks.current);
}

TEST_P(ResourceConformance, OutOfMemoryIsReportedNotCrashed) {
  // 8 MiB on the sim; on a large real device, about 1/512 of it per
  // allocation, so the case reaches the device's own limit quickly, halved
  // until the resource accepts one (a limiting adaptor caps it lower).
  std::size_t chunk = 8 << 20;
  if (!under_test_.sim) {
    absl::StatusOr<MemoryInfo> info = device().GetMemoryInfo(resource().device());
    ASSERT_TRUE(info.ok()) << info.status();
    for (chunk = std::max(chunk, info->total_bytes / 512); chunk > (8u << 20); chunk /= 2) {
      absl::StatusOr<Allocation> probe = resource().Allocate(chunk);
      if (!probe.ok()) continue;
      ASSERT_TRUE(resource().Deallocate(*probe).ok());
      break;
    }
  }
  std::vector<Allocation> held;
  absl::Status last;
  for (int i = 0; i < 10000; ++i) {
    absl::StatusOr<Allocation> a = resource().Allocate(chunk);
    if (!a.ok()) {
      last = a.status();
      break;
    }
    held.push_back(*a);
  }
  EXPECT_EQ(last.code(), absl::StatusCode::kResourceExhausted) << last;
  for (const Allocation& a : held) ASSERT_TRUE(resource().Deallocate(a).ok());
  absl::StatusOr<Allocation> again = resource().Allocate(chunk);
  ASSERT_TRUE(again.ok()) << "memory came back after the frees: " << again.status();
  ASSERT_TRUE(resource().Deallocate(*again).ok());
}

TEST_P(ResourceConformance, BadFreesAreRejectedAndChangeNothing) {
  absl::StatusOr<Allocation> a = resource().Allocate(4096);
  ASSERT_TRUE(a.ok());
  const MemoryStats before = resource().stats();
  int on_stack = 0;
  const Stream s = Default(resource());
  EXPECT_EQ(resource().Deallocate(Allocation{&on_stack, 4, s}).code(),
            absl::StatusCode::kInvalidArgument) << "foreign pointer";
  EXPECT_EQ(resource().Deallocate(Allocation{static_cast<char*>(a->ptr) + 256, 256, s}).code(),
            absl::StatusCode::kInvalidArgument) << "interior pointer";
  EXPECT_EQ(resource().Deallocate(Allocation{nullptr, 4, s}).code(),
            absl::StatusCode::kInvalidArgument) << "null";
  EXPECT_EQ(resource().Deallocate(*a, Stream::Default(resource().device() + 1)).code(),
            absl::StatusCode::kInvalidArgument) << "another device's stream";
  EXPECT_EQ(resource().stats().allocated_bytes.current, before.allocated_bytes.current);
  ASSERT_TRUE(resource().Deallocate(*a).ok());
  EXPECT_EQ(resource().Deallocate(*a).code(), absl::StatusCode::kInvalidArgument) << "double free";
}

}  // namespace
}  // namespace gpualloc::harness
