#include "harness/stress/stress_runner.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <system_error>
#include <thread>
#include <cstring>

#include "absl/strings/str_format.h"
#include "absl/strings/match.h"
#include "allocator/backend/cuda/cuda_backend.h"
#include "allocator/backend/failpoints/failpoint_backend.h"
#include "allocator/backend/hip/hip_backend.h"
#include "allocator/backend/sim/sim_backend.h"
#include "allocator/caching/caching_allocator.h"
#include "allocator/common/status_macros.h"
#include "allocator/context/context.h"
#include "allocator/host/pinned_host_allocator.h"
#include "allocator/observe/tracking_adaptor.h"
#include "allocator/pools/keyed_buffer_cache.h"
#include "allocator/pools/staging_buffer_pool.h"
#include "allocator/streams/stream_pool.h"
#include "allocator/transfer/transfers.h"
#include "harness/invariants/device_reads.h"
#include "harness/invariants/invariants.h"
#include "harness/testing/planted_bug_resource.h"

namespace gpualloc::harness {
namespace {

using Clock = std::chrono::steady_clock;
constexpr std::size_t kCookieBytes = 64;

std::uint64_t Nanos(Clock::duration d) {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count());
}

struct Live {
  Allocation allocation;
  std::uint64_t cookie;
};

// Cookies sit at both ends of an allocation, so an overlap from either side
// shows: `n` bytes of the head pattern, then `n` of the tail's.
std::size_t CookieBytes(const Live& l) { return std::min(kCookieBytes, l.allocation.bytes); }
void* TailOf(const Live& l) {
  return static_cast<char*>(l.allocation.ptr) + (l.allocation.bytes - CookieBytes(l));
}

bool IsInjected(const absl::Status& st) {
  return absl::StrContains(st.message(), "injected") || absl::StrContains(st.message(), "threw");
}

// Everything one campaign shares between its threads.
class Campaign {
 public:
  explicit Campaign(const StressConfig& config) : config_(config) {}

  absl::Status SetUp();
  void Worker(int thread_index);
  void Monitor(const std::function<void(const Progress&)>& progress, double interval_s);
  absl::StatusOr<StressReport> Finish();

  void Stop() {
    stop_flag_.store(true, std::memory_order_relaxed);
    std::lock_guard<std::mutex> lock(stop_mu_);
    stop_ = true;
    stop_cv_.notify_all();
  }

 private:
  void Violation(std::string what) {
    {
      std::lock_guard<std::mutex> lock(report_mu_);
      report_.violations.push_back(std::move(what));
    }
    violations_.fetch_add(1);
    Stop();
  }
  bool Stopping() const { return stop_flag_.load(std::memory_order_relaxed); }
  void Sample(double t_s);
  void FreeLive(const Live& l, Stream stream, LatencyHistogram& hist);
  // Every thread's live allocations in one registry (RMM's check): a new one
  // that overlaps any is a violation at once, whichever thread holds the
  // other, instead of waiting for a cookie to be overwritten and read back.
  // An allocation leaves before it is freed, so memory the allocator hands
  // out again is never mistaken for an overlap.
  absl::Status RegisterLive(const Allocation& a);
  void UnregisterLive(const Allocation& a);
  // The workload's side of stream order, as a GPU program does it (through
  // the raw backend: the harness's own calls are never faulted):
  // cookies staged through a pinned block, or a buffer of the staging pool
  // (every other allocation), copied asynchronously on the allocation's
  // stream, the block freed (the buffer returned) while the copies run.
  absl::Status WriteCookies(const Live& l);
  // Read back on the allocation's stream into pinned memory (a block, or a
  // staging pool's buffer), then checked.
  absl::Status VerifyCookies(const Live& l);
  // A reduction's round trip through the keyed buffer cache on `stream`: a
  // buffer zeroed, read by a kernel, given a value, its result slot checked.
  absl::Status Reduce(DeviceIndex device, Stream stream, std::uint64_t seed);
  // Messages through a device's ring-buffer bridge, from thread `t`: pushed,
  // flushed, echoed back by a device copy, drained (by whichever thread
  // drains, all threads' messages in the order pushed) and checked.
  absl::Status BridgeRoundTrip(DeviceIndex device, int t, int messages);
  // The per-thread order check of one message that came back; bridge_mu_
  // held (a drain and its checks are one step, or two drains' checks could
  // interleave).
  absl::Status CheckBridgeMessage(std::uint64_t m);
  // Used on `other` after an event and a stream wait; the allocator then
  // hears of it by RecordStream, or the allocation's stream waits for it.
  absl::Status UseElsewhere(const Live& l, Stream other, bool record);
  // Read by the next device: the head cookie copied there by a peer copy on
  // one of its streams (checked), a second copy left in flight, and the
  // allocator told of that stream by RecordStream (a peer device's stream).
  absl::Status UseFromPeer(const Live& l, std::uint64_t pick);
  absl::Status Order(Stream from, Stream to);
  // A kernel reading `bytes` of `ptr` on `stream`: on the sim, a simulated
  // kernel the checker judges; on a real device, a copy of (up to 1 MiB of)
  // it into that stream's scratch memory, so the read is real device work.
  absl::Status Kernel(Stream stream, void* ptr, std::size_t bytes);

  const StressConfig& config_;
  std::shared_ptr<Backend> raw_;            // cookies go straight here, never faulted
  std::shared_ptr<SimBackend> sim_;         // when the backend is the sim
  std::mutex live_mu_;
  std::map<std::uintptr_t, std::uintptr_t> live_ranges_;  // begin -> end; guarded by live_mu_
  std::unique_ptr<DeviceReads> reads_;  // a real device's reads (up to 1 MiB each)
  std::shared_ptr<FailpointBackend> faulty_;
  std::unique_ptr<Context> context_;
  DeviceType device_type_ = DeviceType::kSim;
  std::vector<std::shared_ptr<CachingAllocator>> allocators_;
  std::shared_ptr<PinnedHostAllocator> pinned_;  // cookie staging, stream-aware
  std::vector<std::shared_ptr<StagingBufferPool>> staging_;  // per device, over pinned_
  // Per device, over the allocator itself (not the planted bug: its buffers
  // are not in the live registry, so a planted double hand-out must meet a
  // registered allocation to be named for what it is).
  std::vector<std::shared_ptr<KeyedBufferCache>> keyed_;
  // Per device, with the strategy the device's visibility calls for (the
  // others on other devices, round the four).
  std::vector<std::unique_ptr<RingBufferBridge>> bridges_;
  std::mutex bridge_mu_;
  std::vector<std::uint64_t> bridge_sent_;      // per thread, messages pushed; guarded by bridge_mu_
  std::vector<std::uint64_t> bridge_received_;  // per thread, messages back; guarded by bridge_mu_
  // What allocations go through: the allocator, or a tracker over it.
  std::vector<std::shared_ptr<MemoryResource>> resources_;
  std::vector<std::shared_ptr<TrackingAdaptor>> trackers_;
  std::unique_ptr<StreamPool> stream_pool_;  // the streams besides each default one
  std::vector<std::vector<Stream>> streams_;
  std::vector<std::mutex> handoff_mu_;
  std::vector<std::deque<Live>> handoff_;  // freed by a thread other than the allocating one

  Clock::time_point start_;
  std::atomic<std::uint64_t> ops_{0};
  std::atomic<std::uint64_t> violations_{0};
  std::atomic<bool> stop_flag_{false};
  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  bool stop_ = false;

  std::mutex report_mu_;
  StressReport report_;
};

absl::Status Campaign::SetUp() {
  if (config_.backend == "sim") {
    SimOptions sim = SimOptions::WithDevices(config_.devices, config_.device_capacity_mb << 20);
    sim.check_stream_order = config_.check_stream_order;
    sim_ = std::make_shared<SimBackend>(sim);
    raw_ = sim_;
  } else if (config_.backend == "cuda") {
    raw_ = MakeCudaBackend();
    device_type_ = DeviceType::kCuda;
  } else {
    raw_ = MakeHipBackend();
    device_type_ = DeviceType::kHip;
  }
  if (sim_ == nullptr) reads_ = std::make_unique<DeviceReads>(*raw_, std::size_t{1} << 20);
  GPUALLOC_ASSIGN_OR_RETURN(int count, raw_->DeviceCount());
  if (count < config_.devices) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "--devices=%d but the %s backend has %d", config_.devices, config_.backend, count));
  }
  faulty_ = std::make_shared<FailpointBackend>(raw_, config_.seed);
  if (config_.fault_rate > 0) {
    // Error returns and throws on the calls that allocate, release and order
    // memory; each must be survived with no leak and no corruption.
    // Each kind asked for, spread over the calls that allocate, release and
    // order memory: the rate is per call, shared among the kinds.
    const double r = config_.fault_rate / config_.fault_kinds.size();
    for (FaultAction kind : config_.fault_kinds) {
      for (BackendOp op : {BackendOp::kMalloc, BackendOp::kFree, BackendOp::kEventRecord,
                           BackendOp::kStreamWaitEvent, BackendOp::kEventCreate,
                           BackendOp::kEventQuery, BackendOp::kDeviceProperties}) {
        FaultRule rule = FaultRule::WithProbability(op, r, kind);
        if (kind == FaultAction::kDelay) rule.delay = std::chrono::microseconds(200);
        faulty_->AddRule(rule);
      }
    }
  }
  ContextOptions options;
  options.backends[static_cast<int>(device_type_)] =
      [b = faulty_]() -> absl::StatusOr<std::shared_ptr<Backend>> { return b; };
  options.default_device = Device{device_type_, 0};
  context_ = std::make_unique<Context>(std::move(options));

  CachingOptions caching;
  caching.cross_stream = config_.cross_stream;
  caching.expandable_segments = config_.expandable_segments;
  PinnedHostOptions pinned;
  pinned.cache_limit_bytes = std::size_t{64} << 20;
  pinned_ = std::make_shared<PinnedHostAllocator>(raw_, pinned);
  StreamPoolOptions stream_pool;
  stream_pool.streams_per_priority = std::max(1, config_.streams_per_device);
  GPUALLOC_ASSIGN_OR_RETURN(stream_pool_, StreamPool::Create(raw_, stream_pool));
  handoff_mu_ = std::vector<std::mutex>(config_.devices);
  handoff_.resize(config_.devices);
  for (int d = 0; d < config_.devices; ++d) {
    caching.front_cache_blocks = d % 2 == 0 ? config_.front_cache_blocks : 0;
    GPUALLOC_ASSIGN_OR_RETURN(std::unique_ptr<CachingAllocator> a,
                              CachingAllocator::Create(faulty_, d, caching));
    if (config_.limit_mb != 0) GPUALLOC_RETURN_IF_ERROR(a->SetReservedLimit(config_.limit_mb << 20));
    allocators_.push_back(std::move(a));
    if (config_.track_leaks) {
      trackers_.push_back(std::make_shared<TrackingAdaptor>(allocators_.back()));
      resources_.push_back(trackers_.back());
    } else {
      resources_.push_back(allocators_.back());
    }
    streams_.emplace_back();
    streams_.back().push_back(Stream::Default(d));
    // From the stream pool, of both priorities: ordinary streams to the
    // allocators.
    for (int s = 1; s < config_.streams_per_device; ++s) {
      GPUALLOC_ASSIGN_OR_RETURN(
          Stream stream,
          stream_pool_->Next(d, s % 2 == 0 ? StreamPriority::kHigh : StreamPriority::kDefault));
      streams_.back().push_back(stream);
    }
  }
  if (config_.inject_bug) {
    // A real allocator bug, planted in a harness adaptor over device 0's
    // stack: the campaign must catch it.
    auto planted = std::make_shared<PlantedBugResource>(resources_[0]);
    planted->Arm();
    resources_[0] = std::move(planted);
  }
  for (int d = 0; d < config_.devices; ++d) {
    GPUALLOC_ASSIGN_OR_RETURN(std::shared_ptr<StagingBufferPool> staging,
                              StagingBufferPool::Create(pinned_, d));
    staging_.push_back(std::move(staging));
    GPUALLOC_ASSIGN_OR_RETURN(std::shared_ptr<KeyedBufferCache> keyed,
                              KeyedBufferCache::Create(allocators_[d], pinned_));
    keyed_.push_back(std::move(keyed));
    const MemoryVisibility visibility =
        sim_ != nullptr ? MemoryVisibility::kSystemScope
                        : DetectVisibility(*raw_, d, DetectPlatform()).value_or(MemoryVisibility::kExplicitDma);
    static constexpr TransferStrategy kStrategies[] = {
        TransferStrategy::kUnified, TransferStrategy::kAsync, TransferStrategy::kDmaPolling,
        TransferStrategy::kSync};
    BridgeOptions bridge;
    bridge.message_bytes = sizeof(std::uint64_t);
    bridge.capacity = 1024;
    bridge.strategy = d == 0 ? DefaultStrategy(visibility) : kStrategies[d % 4];
    if (!StrategyWorksUnder(*bridge.strategy, visibility)) bridge.strategy = TransferStrategy::kAsync;
    GPUALLOC_ASSIGN_OR_RETURN(std::unique_ptr<RingBufferBridge> b,
                              RingBufferBridge::Create(raw_, pinned_, allocators_[d],
                                                       streams_[d].back(), bridge, visibility));
    bridges_.push_back(std::move(b));
  }
  bridge_sent_.assign(static_cast<std::size_t>(std::max(1, config_.threads)), 0);
  bridge_received_ = bridge_sent_;
  report_.config = config_;
  start_ = Clock::now();
  return absl::OkStatus();
}

absl::Status Campaign::Order(Stream from, Stream to) { return OrderStreams(*raw_, from, to); }

absl::Status Campaign::Kernel(Stream stream, void* ptr, std::size_t bytes) {
  if (sim_ == nullptr) return reads_->Read(stream, ptr, bytes);
  return sim_->LaunchKernel(stream, {{ptr, bytes, AccessMode::kRead, 0}}, config_.kernel_ns,
                            "stress_kernel");
}

absl::Status Campaign::WriteCookies(const Live& l) {
  const std::size_t n = CookieBytes(l);
  const Stream s = l.allocation.stream;
  const std::vector<unsigned char> head = CookiePattern(l.cookie, n);
  const std::vector<unsigned char> tail = CookiePattern(~l.cookie, n);
  if (l.cookie % 2 == 1) {
    // Through the staging pool: returned with both copies queued, so the
    // pool must not hand the buffer to another thread before they are done.
    GPUALLOC_ASSIGN_OR_RETURN(StagingBuffer staging,
                              staging_[l.allocation.device()]->Acquire(2 * n));
    const DeviceSpan to{l.allocation.ptr, l.allocation.bytes, l.allocation.device()};
    GPUALLOC_RETURN_IF_ERROR(staging.HostWrite(0, head.data(), n));
    GPUALLOC_RETURN_IF_ERROR(staging.HostWrite(n, tail.data(), n));
    GPUALLOC_RETURN_IF_ERROR(staging.Upload(to, 0, n, s).status());
    GPUALLOC_RETURN_IF_ERROR(staging.Upload(to, l.allocation.bytes - n, n, s, n).status());
    return staging.Reset();
  }
  GPUALLOC_ASSIGN_OR_RETURN(PinnedBlock staging, pinned_->Allocate(2 * n, l.allocation.device()));
  auto* bytes = static_cast<unsigned char*>(staging.ptr);
  absl::Status st = raw_->NoteHostAccess(bytes, 2 * n, AccessMode::kWrite);
  if (st.ok()) {
    std::memcpy(bytes, head.data(), n);
    std::memcpy(bytes + n, tail.data(), n);
    st = raw_->MemcpyAsync(l.allocation.ptr, bytes, n, CopyKind::kHostToDevice, s);
  }
  if (st.ok()) st = raw_->MemcpyAsync(TailOf(l), bytes + n, n, CopyKind::kHostToDevice, s);
  if (st.ok()) st = pinned_->RecordStream(staging, s);
  // Freed while the copies may still read it: the pinned allocator must wait.
  absl::Status freed = pinned_->Deallocate(staging);
  return st.ok() ? freed : st;
}

absl::Status Campaign::VerifyCookies(const Live& l) {
  const std::size_t n = CookieBytes(l);
  const Stream s = l.allocation.stream;
  Allocation tail = l.allocation;
  tail.ptr = TailOf(l);
  if ((l.cookie >> 1) % 2 == 1) {
    // Read back through the staging pool, as an application reads results.
    GPUALLOC_ASSIGN_OR_RETURN(StagingBuffer back,
                              staging_[l.allocation.device()]->Acquire(2 * n));
    const DeviceSpan from{l.allocation.ptr, l.allocation.bytes, l.allocation.device()};
    GPUALLOC_RETURN_IF_ERROR(back.ReadBack(from, 0, n, s).status());
    GPUALLOC_ASSIGN_OR_RETURN(Completion read,
                              back.ReadBack(from, l.allocation.bytes - n, n, s, n));
    GPUALLOC_RETURN_IF_ERROR(read.Wait());
    std::vector<unsigned char> seen(2 * n);
    GPUALLOC_RETURN_IF_ERROR(back.HostRead(0, seen.data(), 2 * n));
    GPUALLOC_RETURN_IF_ERROR(CheckCookieBytes(l.allocation, l.cookie, seen.data(), n));
    GPUALLOC_RETURN_IF_ERROR(CheckCookieBytes(tail, ~l.cookie, seen.data() + n, n));
    return back.Reset();
  }
  GPUALLOC_ASSIGN_OR_RETURN(PinnedBlock back, pinned_->Allocate(2 * n, l.allocation.device()));
  auto* bytes = static_cast<unsigned char*>(back.ptr);
  absl::Status st = raw_->MemcpyAsync(bytes, l.allocation.ptr, n, CopyKind::kDeviceToHost, s);
  if (st.ok()) st = raw_->MemcpyAsync(bytes + n, TailOf(l), n, CopyKind::kDeviceToHost, s);
  if (st.ok()) st = pinned_->RecordStream(back, s);
  if (st.ok()) st = raw_->SynchronizeStream(s);
  if (st.ok()) st = raw_->NoteHostAccess(bytes, 2 * n, AccessMode::kRead);
  if (st.ok()) st = CheckCookieBytes(l.allocation, l.cookie, bytes, n);
  if (st.ok()) st = CheckCookieBytes(tail, ~l.cookie, bytes + n, n);
  absl::Status freed = pinned_->Deallocate(back);
  return st.ok() ? freed : st;
}

absl::Status Campaign::CheckBridgeMessage(std::uint64_t m) {
  const std::size_t t = static_cast<std::size_t>(m >> 40);
  const std::uint64_t seq = m & ((std::uint64_t{1} << 40) - 1);
  if (t >= bridge_received_.size() || seq != bridge_received_[t]) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "ring-buffer bridge: message %d of thread %d came back, but %d was next", seq, t,
        t < bridge_received_.size() ? bridge_received_[t] : 0));
  }
  ++bridge_received_[t];
  return absl::OkStatus();
}

absl::Status Campaign::BridgeRoundTrip(DeviceIndex device, int t, int messages) {
  RingBufferBridge& bridge = *bridges_[device];
  // One round trip at a time: the device-side echo must not be enqueued
  // while another thread's flush writes a unified ring in place (the
  // bridge's contract), and numbering, pushing, draining and checking stay
  // in one order.
  std::lock_guard<std::mutex> lock(bridge_mu_);
  {
    for (int k = 0; k < messages; ++k) {
      const std::uint64_t m =
          static_cast<std::uint64_t>(t) << 40 | bridge_sent_[static_cast<std::size_t>(t)];
      if (!bridge.Push(&m).ok()) break;  // full: flushed below first
      ++bridge_sent_[static_cast<std::size_t>(t)];
    }
  }
  GPUALLOC_RETURN_IF_ERROR(bridge.FlushToDevice().status());
  // The device's side: a kernel reads the ring, a copy echoes it (count and
  // slots) into the to-host ring, in the bridge stream's order.
  const DeviceRing in = bridge.to_device();
  const DeviceRing out = bridge.to_host();
  const std::size_t bytes = RingBufferBridge::kHeaderBytes + in.capacity * in.message_bytes;
  GPUALLOC_RETURN_IF_ERROR(Kernel(bridge.stream(), in.header, bytes));
  GPUALLOC_RETURN_IF_ERROR(
      raw_->MemcpyAsync(out.header, in.header, bytes, CopyKind::kDeviceToDevice, bridge.stream()));
  absl::Status checked = absl::OkStatus();
  GPUALLOC_RETURN_IF_ERROR(bridge
                               .DrainToHost([&](const void* p) {
                                 std::uint64_t m = 0;
                                 std::memcpy(&m, p, sizeof(m));
                                 if (checked.ok()) checked = CheckBridgeMessage(m);
                               })
                               .status());
  return checked;
}

absl::Status Campaign::Reduce(DeviceIndex device, Stream stream, std::uint64_t seed) {
  const std::size_t count = seed % 16 + 1;
  GPUALLOC_ASSIGN_OR_RETURN(KeyedBuffer<std::uint64_t> b,
                            keyed_[device]->Acquire<std::uint64_t>(count, (seed >> 4) % 2, stream));
  GPUALLOC_RETURN_IF_ERROR(b.Zero());
  GPUALLOC_RETURN_IF_ERROR(Kernel(stream, b.data(), count * sizeof(std::uint64_t)));
  const Transfers transfers(raw_);
  GPUALLOC_ASSIGN_OR_RETURN(Completion written,
                            transfers.ToDevice(b.span(), (count - 1) * sizeof(seed), &seed,
                                               sizeof(seed), stream));
  GPUALLOC_RETURN_IF_ERROR(written.Wait());
  GPUALLOC_ASSIGN_OR_RETURN(std::uint64_t seen, b.ReadResult(count - 1));
  if (seen != seed) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "device %d: keyed buffer %p's result slot %d read %#x, the device was given %#x", device,
        static_cast<void*>(b.data()), count - 1, seen, seed));
  }
  return b.Reset();
}

absl::Status Campaign::UseElsewhere(const Live& l, Stream other, bool record) {
  const Stream own = l.allocation.stream;
  GPUALLOC_RETURN_IF_ERROR(Order(own, other));  // the cookies are written first
  GPUALLOC_RETURN_IF_ERROR(Kernel(other, l.allocation.ptr, l.allocation.bytes));
  if (!record) return Order(other, own);
  absl::Status st = allocators_[l.allocation.device()]->RecordStream(l.allocation, other);
  // A refused RecordStream (an injected fault) must not leave the use unknown.
  return st.ok() ? st : Order(other, own);
}

absl::Status Campaign::UseFromPeer(const Live& l, std::uint64_t pick) {
  const DeviceIndex own = l.allocation.device();
  const DeviceIndex peer = static_cast<DeviceIndex>((own + 1) % config_.devices);
  const Stream on = streams_[peer][pick % streams_[peer].size()];
  const std::size_t n = CookieBytes(l);
  absl::StatusOr<DeviceBuffer> made = DeviceBuffer::Create(allocators_[peer], n, on);
  if (!made.ok()) {
    // An injected fault or a full device refused the copy's destination:
    // nothing was used, nothing to check.
    if (IsInjected(made.status()) || absl::IsResourceExhausted(made.status())) {
      return absl::OkStatus();
    }
    return made.status();
  }
  DeviceBuffer there = *std::move(made);
  const Transfers transfers(raw_);
  const DeviceSpan from{l.allocation.ptr, l.allocation.bytes, own};
  GPUALLOC_RETURN_IF_ERROR(Order(l.allocation.stream, on));  // after the cookie writes
  GPUALLOC_RETURN_IF_ERROR(transfers.PeerToPeer(Span(there), 0, from, 0, n, on).status());
  std::vector<unsigned char> seen(n);
  GPUALLOC_RETURN_IF_ERROR(transfers.ToHostSync(seen.data(), Span(there), 0, n, on));
  GPUALLOC_RETURN_IF_ERROR(CheckCookieBytes(l.allocation, l.cookie, seen.data(), n));
  GPUALLOC_RETURN_IF_ERROR(transfers.PeerToPeer(Span(there), 0, from, 0, n, on).status());
  absl::Status st = allocators_[own]->RecordStream(l.allocation, on);
  // A refused RecordStream (an injected fault) must not leave the use unknown.
  return st.ok() ? st : Order(on, l.allocation.stream);
}

absl::Status Campaign::RegisterLive(const Allocation& a) {
  const auto begin = reinterpret_cast<std::uintptr_t>(a.ptr);
  const std::uintptr_t end = begin + a.bytes;
  std::lock_guard<std::mutex> lock(live_mu_);
  auto next = live_ranges_.lower_bound(begin);
  auto clash = [&](std::map<std::uintptr_t, std::uintptr_t>::const_iterator it) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "device %d: allocation [%#x, %#x) overlaps the live allocation [%#x, %#x)", a.device(),
        begin, end, it->first, it->second));
  };
  if (next != live_ranges_.end() && next->first < end) return clash(next);
  if (next != live_ranges_.begin() && std::prev(next)->second > begin) return clash(std::prev(next));
  live_ranges_.emplace_hint(next, begin, end);
  return absl::OkStatus();
}

void Campaign::UnregisterLive(const Allocation& a) {
  std::lock_guard<std::mutex> lock(live_mu_);
  auto it = live_ranges_.find(reinterpret_cast<std::uintptr_t>(a.ptr));
  if (it != live_ranges_.end() && it->second == it->first + a.bytes) live_ranges_.erase(it);
}

void Campaign::FreeLive(const Live& l, Stream stream, LatencyHistogram& hist) {
  absl::Status checked = VerifyCookies(l);
  // The last use, still queued when the block is freed.
  if (checked.ok()) checked = Kernel(l.allocation.stream, l.allocation.ptr, CookieBytes(l));
  if (!checked.ok()) {
    Violation(absl::StrFormat("device %d: %s", l.allocation.device(), checked.message()));
    return;
  }
  MemoryResource& alloc = *resources_[l.allocation.device()];
  UnregisterLive(l.allocation);  // before the allocator may hand it out again
  const auto t0 = Clock::now();  // one sample per free, its retries included
  for (int attempt = 0; attempt < 100; ++attempt) {
    absl::Status st = alloc.Deallocate(l.allocation, stream);
    if (st.ok()) {
      hist.Record(Nanos(Clock::now() - t0));
      return;
    }
    if (!IsInjected(st)) {
      Violation(absl::StrFormat("free of %p on device %d failed unexpectedly: %s",
                                l.allocation.ptr, l.allocation.device(), st.message()));
      return;
    }
    std::lock_guard<std::mutex> lock(report_mu_);
    ++report_.fault_errors;  // the block stays allocated: try again
  }
  Violation(absl::StrFormat("free of %p failed 100 times in a row", l.allocation.ptr));
}

void Campaign::Worker(int t) {
  std::mt19937_64 rng(config_.seed * 1000003 + static_cast<std::uint64_t>(t));
  std::uniform_real_distribution<double> coin(0, 1);
  SizeSampler sizes(config_);
  std::vector<Live> live;
  LatencyHistogram alloc_hist, free_hist;
  std::uint64_t allocations = 0, frees = 0, oom = 0, faults = 0, xthread = 0, xstream = 0,
                switches = 0, flushes = 0, checks = 0, elsewhere = 0, limit_changes = 0,
                reductions = 0, bridge_trips = 0, peer_uses = 0;
  if (!context_->SetDevice(Device{device_type_, t % config_.devices}).ok()) ++faults;
  const auto deadline = start_ + std::chrono::duration_cast<Clock::duration>(
                                     std::chrono::duration<double>(config_.duration_s));
  for (std::uint64_t local = 0; !Stopping(); ++local) {
    const std::uint64_t n = ops_.fetch_add(1, std::memory_order_relaxed);
    if (config_.ops != 0 && n >= config_.ops) break;
    if (config_.ops == 0 && (local & 63) == 0 && Clock::now() >= deadline) break;
    if (coin(rng) < config_.device_switch_fraction / 16) {
      const Device to{device_type_, static_cast<DeviceIndex>(rng() % config_.devices)};
      absl::Status st = context_->SetDevice(to);
      if (st.ok()) {
        ++switches;
      } else if (IsInjected(st)) {
        ++faults;
      } else {
        Violation(absl::StrFormat("switching to %s failed: %s", to.ToString(), st.message()));
      }
    }
    const DeviceIndex device = context_->CurrentDevice().index;
    const std::vector<Stream>& streams = streams_[device];
    CachingAllocator& cache = *allocators_[device];
    MemoryResource& alloc = *resources_[device];

    if (live.size() < static_cast<std::size_t>(config_.max_live_per_thread) &&
        (live.empty() || coin(rng) < 0.5)) {
      const std::size_t bytes = sizes.Next(rng);
      const Stream stream = streams[rng() % streams.size()];
      const auto t0 = Clock::now();
      absl::StatusOr<Allocation> a = alloc.Allocate(bytes, stream);
      alloc_hist.Record(Nanos(Clock::now() - t0));
      if (a.ok()) {
        Live l{*a, rng()};
        absl::Status st = RegisterLive(l.allocation);
        if (!st.ok()) {
          Violation(std::string(st.message()));
          break;
        }
        st = WriteCookies(l);
        if (st.ok() && config_.devices > 1 && coin(rng) < config_.use_elsewhere_fraction / 4) {
          st = UseFromPeer(l, rng());
          ++peer_uses;
        }
        if (st.ok() && coin(rng) < config_.use_elsewhere_fraction) {
          const Stream other = streams[rng() % streams.size()];
          if (other != stream) {
            st = UseElsewhere(l, other, coin(rng) < 0.5);
            ++elsewhere;
          }
        }
        if (!st.ok()) {
          Violation(absl::StrFormat("using a fresh allocation on its streams failed: %s",
                                    st.message()));
        }
        live.push_back(l);
        ++allocations;
      } else if (IsInjected(a.status())) {
        ++faults;
      } else if (a.status().code() == absl::StatusCode::kResourceExhausted) {
        ++oom;
      } else {
        Violation(absl::StrFormat("allocating %d bytes on device %d failed unexpectedly: %s",
                                  bytes, device, a.status().message()));
      }
    } else if (!live.empty()) {
      const std::size_t i = config_.lifetime == Lifetime::kFifo   ? 0
                            : config_.lifetime == Lifetime::kLifo ? live.size() - 1
                                                                  : rng() % live.size();
      Live l = live[i];
      if (config_.lifetime == Lifetime::kFifo) {
        live.erase(live.begin());  // keeps allocation order
      } else {
        live[i] = live.back();
        live.pop_back();
      }
      const DeviceIndex owner = l.allocation.device();
      if (coin(rng) < config_.cross_thread_free_fraction) {
        std::lock_guard<std::mutex> lock(handoff_mu_[owner]);
        handoff_[owner].push_back(l);
        ++xthread;
      } else {
        Stream on = l.allocation.stream;
        if (coin(rng) < config_.cross_stream_free_fraction) {
          on = streams_[owner][rng() % streams_[owner].size()];
          if (on != l.allocation.stream) ++xstream;
        }
        FreeLive(l, on, free_hist);
        ++frees;
      }
    }
    // Frees handed over by other threads.
    if ((local & 7) == 0) {
      std::vector<Live> mine;
      {
        std::lock_guard<std::mutex> lock(handoff_mu_[device]);
        while (!handoff_[device].empty() && mine.size() < 4) {
          mine.push_back(handoff_[device].front());
          handoff_[device].pop_front();
        }
      }
      for (const Live& l : mine) {
        FreeLive(l, l.allocation.stream, free_hist);
        ++frees;
      }
    }
    if ((local & 255) == 0) {
      ++checks;
      if (absl::Status st = CheckSnapshot(cache.Snapshot()); !st.ok()) {
        Violation(absl::StrFormat("device %d: %s", device, st.message()));
      }
      if (sim_ != nullptr) {
        if (absl::Status st = CheckStreamOrder(*sim_); !st.ok()) Violation(std::string(st.message()));
      }
    }
    if (coin(rng) < 0.02) {
      absl::Status st = BridgeRoundTrip(device, t, 1 + static_cast<int>(rng() % 4));
      ++bridge_trips;
      if (!st.ok()) {
        Violation(absl::StrFormat("device %d: a ring-buffer bridge round trip failed: %s", device,
                                  st.message()));
      }
    }
    if (coin(rng) < 0.02) {
      absl::Status st = Reduce(device, streams[rng() % streams.size()], rng());
      ++reductions;
      if (IsInjected(st)) {
        ++faults;
      } else if (st.code() == absl::StatusCode::kResourceExhausted) {
        ++oom;
      } else if (!st.ok()) {
        Violation(absl::StrFormat("a reduction through the keyed buffer cache failed: %s",
                                  st.message()));
      }
    }
    if (coin(rng) < 0.0005) {
      if (cache.EmptyCache(config_.max_size).ok()) ++flushes;
    }
    if (coin(rng) < 0.0005) {
      // The limit moves under the workload (free memory is given back with
      // kernels still queued on it), and comes back to where it was.
      const std::size_t base = config_.limit_mb << 20;
      const std::size_t cap = base ? base : config_.device_capacity_mb << 20;
      const bool lower = cache.reserved_limit() == (base ? base : cap);
      const std::size_t to =
          lower ? std::max<std::size_t>(cap / 2 + rng() % (cap / 2), 2 * config_.max_size) : base;
      if (cache.SetReservedLimit(to).ok()) ++limit_changes;
    }
  }
  for (const Live& l : live) {
    FreeLive(l, l.allocation.stream, free_hist);
    ++frees;
  }
  std::lock_guard<std::mutex> lock(report_mu_);
  report_.allocate_ns.Merge(alloc_hist);
  report_.free_ns.Merge(free_hist);
  report_.allocations += allocations;
  report_.frees += frees;
  report_.out_of_memory += oom;
  report_.fault_errors += faults;
  report_.cross_thread_frees += xthread;
  report_.cross_stream_frees += xstream;
  report_.reductions += reductions;
  report_.bridge_round_trips += bridge_trips;
  report_.peer_uses += peer_uses;
  report_.device_switches += switches;
  report_.cache_flushes += flushes;
  report_.invariant_checks += checks;
  report_.used_elsewhere += elsewhere;
  report_.limit_changes += limit_changes;
}

void Campaign::Sample(double t_s) {
  TimelineSample s;
  s.t_s = t_s;
  std::uint64_t free_bytes = 0, largest = 0;
  std::vector<MemorySnapshot> snaps;
  for (const auto& a : allocators_) {
    MemoryStats st = a->stats();
    s.allocated += st.allocated_bytes.current;
    s.reserved += st.reserved_bytes.current;
    free_bytes += st.free_bytes;
    largest = std::max<std::uint64_t>(largest, st.largest_free_block);
  }
  s.largest_free_over_free = free_bytes ? static_cast<double>(largest) / free_bytes : 1.0;
  std::lock_guard<std::mutex> lock(report_mu_);
  const bool new_peak = s.reserved > report_.peak_reserved;
  report_.peak_reserved = std::max(report_.peak_reserved, s.reserved);
  report_.timeline.push_back(s);
  if (new_peak) {
    report_.peak_snapshot.clear();
    for (const auto& a : allocators_) report_.peak_snapshot.push_back(a->Snapshot());
  }
}

void Campaign::Monitor(const std::function<void(const Progress&)>& progress, double interval_s) {
  Sample(0);  // the timeline always starts at the start, however short the run
  auto next_progress = Clock::now();
  std::unique_lock<std::mutex> lock(stop_mu_);
  while (!stop_) {
    stop_cv_.wait_for(lock, std::chrono::milliseconds(100));
    lock.unlock();
    const double t = std::chrono::duration<double>(Clock::now() - start_).count();
    Sample(t);
    if (progress && Clock::now() >= next_progress) {
      next_progress = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                         std::chrono::duration<double>(interval_s));
      Progress p;
      p.elapsed_s = t;
      p.planned_s = config_.ops ? 0 : config_.duration_s;
      p.ops = ops_.load();
      {
        std::lock_guard<std::mutex> r(report_mu_);
        if (!report_.timeline.empty()) {
          p.allocated = report_.timeline.back().allocated;
          p.reserved = report_.timeline.back().reserved;
        }
        p.peak_reserved = report_.peak_reserved;
      }
      p.faults = faulty_->faults_fired();
      p.violations = violations_.load();
      progress(p);
    }
    lock.lock();
  }
}

absl::StatusOr<StressReport> Campaign::Finish() {
  report_.elapsed_s = std::chrono::duration<double>(Clock::now() - start_).count();
  Sample(report_.elapsed_s);  // ... and ends at the end
  report_.ops = std::min<std::uint64_t>(ops_.load(), config_.ops ? config_.ops : ops_.load());
  // Leftover hand-overs, then a clean, fault-free teardown.
  for (int d = 0; d < config_.devices; ++d) {
    for (const Live& l : handoff_[d]) {
      FreeLive(l, l.allocation.stream, report_.free_ns);
      ++report_.frees;
    }
    handoff_[d].clear();
  }
  report_.faults_injected = faulty_->faults_fired();
  faulty_->ClearRules();
  faulty_->ClearStickyError();
  for (const auto& a : allocators_) {
    a->SetReservedLimit(config_.limit_mb << 20).IgnoreError();  // as the campaign began
  }
  // The pools give their buffers back (the keyed cache's to the allocators,
  // before the leak check).
  for (const auto& pool : staging_) {
    if (absl::Status st = pool->Trim(); !st.ok()) {
      report_.violations.push_back(absl::StrCat("the staging pool: ", st.message()));
    }
    const StagingPoolStats s = pool->stats();
    report_.staging.acquires += s.acquires;
    report_.staging.hits += s.hits;
    report_.staging.misses += s.misses;
    report_.staging.busy_skips += s.busy_skips;
    report_.staging.releases += s.releases;
  }
  for (const auto& cache : keyed_) {
    if (absl::Status st = cache->Trim(); !st.ok()) {
      report_.violations.push_back(absl::StrCat("the keyed buffer cache: ", st.message()));
    }
    const KeyedCacheStats s = cache->stats();
    report_.keyed.acquires += s.acquires;
    report_.keyed.hits += s.hits;
    report_.keyed.misses += s.misses;
    report_.keyed.stream_handoffs += s.stream_handoffs;
    report_.keyed.dropped += s.dropped;
  }
  staging_.clear();
  // The bridges: a last round trip on each brings every message home.
  for (std::size_t d = 0; d < bridges_.size(); ++d) {
    if (absl::Status st = BridgeRoundTrip(static_cast<DeviceIndex>(d), 0, 0); !st.ok()) {
      report_.violations.push_back(absl::StrCat("the ring-buffer bridge: ", st.message()));
    }
    const BridgeStats s = bridges_[d]->stats();
    report_.bridge_to_device += s.host_to_device;
    report_.bridge_to_host += s.device_to_host;
  }
  {
    std::lock_guard<std::mutex> lock(bridge_mu_);
    for (std::size_t t = 0; t < bridge_sent_.size(); ++t) {
      if (bridge_sent_[t] != bridge_received_[t]) {
        report_.violations.push_back(absl::StrFormat(
            "the ring-buffer bridge: thread %d sent %d messages and got %d back", t,
            bridge_sent_[t], bridge_received_[t]));
      }
    }
  }
  bridges_.clear();
  keyed_.clear();
  if (absl::Status st = pinned_->Flush(/*release_cache=*/true); !st.ok()) {
    report_.violations.push_back(absl::StrCat("the pinned staging allocator: ", st.message()));
  }
  report_.pinned = pinned_->stats();
  pinned_.reset();
  for (const auto& a : allocators_) {
    const MemoryStats s = a->stats();
    report_.peak_allocated += s.allocated_bytes.peak;
    report_.cache_hits += s.cache_hits;
    report_.cache_misses += s.cache_misses;
    report_.upstream_allocs += s.upstream_allocs;
    report_.upstream_frees += s.upstream_frees;
    report_.cross_stream_reuses += s.cross_stream_reuses;
    if (s.allocated_bytes.current != 0) {
      report_.leak_check_passed = false;
      report_.violations.push_back(absl::StrFormat(
          "device %d: %d bytes still allocated after every allocation was freed", a->device(),
          s.allocated_bytes.current));
    }
    if (absl::Status st = CheckSnapshot(a->Snapshot()); !st.ok()) {
      report_.violations.push_back(absl::StrFormat("device %d at the end: %s", a->device(), st.message()));
    }
    if (absl::Status st = a->EmptyCache(); !st.ok()) {
      report_.violations.push_back(absl::StrFormat("device %d: EmptyCache failed: %s", a->device(), st.message()));
    }
  }
  for (const auto& t : trackers_) {
    if (t->live_count() != 0) {
      report_.leak_check_passed = false;
      report_.violations.push_back("the leak tracker still lists allocations: " + t->Report());
    }
  }
  trackers_.clear();
  resources_.clear();
  allocators_.clear();
  stream_pool_.reset();  // destroys the streams, each after its work
  reads_.reset();  // frees their scratch
  if (sim_ != nullptr) {
    const SimAccounting acc = sim_->Accounting();
    report_.stream_order = acc.stream_order;
    report_.stream_order_checked = sim_->stream_order() != nullptr;
    if (absl::Status st = CheckStreamOrder(*sim_); !st.ok()) {
      report_.violations.push_back(std::string(st.message()));
    }
    if (!acc.AllReleased() || acc.guard_violations != 0) {
      report_.leak_check_passed = false;
      report_.violations.push_back("leak or overrun at teardown (the sim's accounting): " +
                                   acc.Describe());
    }
  }
  return std::move(report_);
}

}  // namespace

std::string StressReport::InconclusiveReason() const {
  const std::uint64_t attempts = allocations + out_of_memory;
  if (allocations >= kMinConclusiveAllocations && allocations * 10 >= attempts) return "";
  return absl::StrFormat(
      "only %d of %d allocation attempts succeeded (%d refused as out of memory): too few to "
      "exercise the allocator; check --min_size/--max_size against --device_capacity_mb and "
      "--limit_mb, and --ops/--duration",
      allocations, attempts, out_of_memory);
}

absl::StatusOr<StressReport> RunStress(const StressConfig& config,
                                       const std::function<void(const Progress&)>& progress,
                                       double progress_interval_s) {
  GPUALLOC_RETURN_IF_ERROR(config.Validate());
  Campaign campaign(config);
  GPUALLOC_RETURN_IF_ERROR(campaign.SetUp());
  // The machine may refuse threads: that is an error to report, not a crash.
  std::vector<std::thread> threads;
  absl::Status started = absl::OkStatus();
  try {
    threads.emplace_back([&] { campaign.Monitor(progress, progress_interval_s); });
    for (int t = 0; t < config.threads; ++t) threads.emplace_back([&, t] { campaign.Worker(t); });
  } catch (const std::system_error& e) {
    started = absl::ResourceExhaustedError(absl::StrFormat(
        "cannot start %d worker threads and a monitor (this machine refused thread %d): %s",
        config.threads, threads.size() + 1, e.what()));
    campaign.Stop();
  }
  for (std::size_t i = 1; i < threads.size(); ++i) threads[i].join();
  campaign.Stop();
  if (!threads.empty()) threads[0].join();
  absl::StatusOr<StressReport> report = campaign.Finish();
  if (!started.ok()) return started;
  return report;
}

}  // namespace gpualloc::harness
