#include "harness/ops/interpreter.h"

#include <algorithm>
#include <cstring>
#include <tuple>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "allocator/caching/arena_resource.h"
#include "allocator/caching/size_class_pool.h"
#include "allocator/buffer/shared_memory.h"
#include "allocator/transfer/transfers.h"
#include "allocator/common/status_macros.h"

namespace gpualloc::harness {
namespace {

constexpr std::size_t kCookieBytes = 32;

bool ExpectedFailure(const absl::Status& st) {
  return st.code() == absl::StatusCode::kResourceExhausted ||
         absl::StrContains(st.message(), "injected") || absl::StrContains(st.message(), "threw");
}

}  // namespace

OpInterpreter::OpInterpreter(InterpreterOptions options)
    : options_(options), next_cookie_(options.seed * 7919) {
  if (options_.device) {
    device_ = options_.device;
    devices_ = std::clamp(device_->DeviceCount().value_or(1), 1, 2);
  } else {
    sim_ = std::make_shared<SimBackend>(SimOptions::WithDevices(2, options_.device_capacity));
    device_ = sim_;
  }
  faulty_ = std::make_shared<FailpointBackend>(device_, options_.seed);
  cache_ = CachingAllocator::Create(faulty_, 0, options_.caching).value();
  switch (options_.stack) {
    case InterpreterStack::kCaching:
      top_ = cache_;
      break;
    case InterpreterStack::kSizeClassOverCaching:
      top_ = SizeClassPool::Create(cache_, faulty_, SizeClassOptions{}).value();
      break;
    case InterpreterStack::kArenaOverCaching: {
      ArenaOptions arena;
      arena.pack_threshold = 1 << 20;
      arena.chunk_bytes = 8 << 20;
      top_ = ArenaResource::Create(cache_, arena).value();
      break;
    }
  }
  PinnedHostOptions pinned;
  pinned.cache_limit_bytes = 2 << 20;
  pinned.max_pending_per_owner = 4;
  pinned_ = std::make_unique<PinnedHostAllocator>(faulty_, pinned);
  staging_pinned_ = std::make_shared<PinnedHostAllocator>(faulty_, pinned);
  StagingPoolOptions staging;
  staging.max_buffers = 4;
  staging_ = StagingBufferPool::Create(staging_pinned_, 0, staging).value();
  keyed_memory_ = CachingAllocator::Create(faulty_, 0, options_.caching).value();
  keyed_pinned_ = std::make_shared<PinnedHostAllocator>(faulty_, pinned);
  KeyedCacheOptions keyed;
  keyed.max_per_key = 2;
  keyed.max_idle_buffers = 8;
  keyed_ = KeyedBufferCache::Create(keyed_memory_, keyed_pinned_, keyed).value();
  streams_.push_back(Stream::Default(0));
  // The other streams come from a stream pool, of both priorities: to the
  // allocators they are ordinary streams.
  StreamPoolOptions pool;
  pool.streams_per_priority = std::max(1, options_.streams);
  stream_pool_ = StreamPool::Create(device_, pool).value();
  for (int i = 1; i < options_.streams; ++i) {
    streams_.push_back(
        stream_pool_->Next(0, i % 2 == 0 ? StreamPriority::kHigh : StreamPriority::kDefault).value());
  }
  // Bridges over the faulty backend, their rings and staging from allocators
  // of their own: every strategy the device's visibility allows.
  bridge_memory_ = CachingAllocator::Create(faulty_, 0, options_.caching).value();
  bridge_pinned_ = std::make_shared<PinnedHostAllocator>(faulty_, pinned);
  const MemoryVisibility visibility = DetectVisibility(*device_, 0, PlatformInfo{}).value();
  for (TransferStrategy s : {TransferStrategy::kSync, TransferStrategy::kAsync,
                             TransferStrategy::kUnified, TransferStrategy::kDmaPolling}) {
    if (!StrategyWorksUnder(s, visibility)) continue;
    BridgeOptions bridge;
    bridge.message_bytes = sizeof(std::uint64_t);
    bridge.capacity = 16;
    bridge.strategy = s;
    bridges_.push_back(BridgeUnderTest{
        RingBufferBridge::Create(faulty_, bridge_pinned_, bridge_memory_, streams_.back(), bridge,
                                 visibility)
            .value(),
        {}});
  }
  if (devices_ >= 2) {
    peer_cache_ = CachingAllocator::Create(faulty_, 1, options_.caching).value();
    peer_stream_ = stream_pool_->Next(1).value();
  }
  if (!sim_) {
    free_before_ = device_->GetMemoryInfo(0).value().free_bytes;
    reads_ = std::make_unique<DeviceReads>(*device_, std::size_t{1} << 20);
  }
}

absl::Status OpInterpreter::Work(Stream on, void* p, std::size_t n, AccessMode mode,
                                 std::int64_t ns, const char* name) {
  if (sim_) return sim_->LaunchKernel(on, {{p, n, mode, 0x33}}, ns, name);
  if (mode == AccessMode::kWrite) return device_->MemsetAsync(p, 0x33, n, on);
  return reads_->Read(on, p, n);
}

OpInterpreter::~OpInterpreter() {
  if (!finished_) Finish().IgnoreError();
}

absl::Status OpInterpreter::Violation(const absl::Status& st) const {
  return absl::FailedPreconditionError(absl::StrFormat(
      "%s\n  after %d ops: %s", st.message(), history_.size(), OpsToString(history_)));
}

std::pair<void*, std::size_t> OpInterpreter::WorkRegion(const Allocation& a) {
  const std::size_t skip = std::min(kCookieBytes, a.bytes);
  return {static_cast<char*>(a.ptr) + skip, a.bytes - skip};
}

absl::Status OpInterpreter::Order(Stream from, Stream to) {
  return OrderStreams(*device_, from, to);
}

absl::Status OpInterpreter::JoinReaders(Live& l, Stream to) {
  for (Stream r : l.readers) GPUALLOC_RETURN_IF_ERROR(Order(r, to));
  if (to == l.allocation.stream) l.readers.clear();
  return absl::OkStatus();
}

absl::Status OpInterpreter::Check() {
  if (sim_) GPUALLOC_RETURN_IF_ERROR(CheckStreamOrder(*sim_));
  const MemorySnapshot snap = cache_->Snapshot();
  GPUALLOC_RETURN_IF_ERROR(CheckSnapshot(snap));
  if (top_ == cache_) GPUALLOC_RETURN_IF_ERROR(shadow_.CheckAgainst(snap));
  // The model: the live set's bytes and count are what the top of the stack
  // reports (for the plain cache, the snapshot's own stats).
  const MemoryStats top = top_ == cache_ ? snap.stats : top_->stats();
  if (top.requested_bytes.current != static_cast<std::int64_t>(shadow_.bytes()) ||
      top.active_blocks.current != static_cast<std::int64_t>(shadow_.size())) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "model disagrees: %d live allocations of %d bytes, the allocator reports %d of %d",
        shadow_.size(), shadow_.bytes(), top.active_blocks.current, top.requested_bytes.current));
  }
  std::size_t pinned_bytes = 0;
  for (const LivePinned& b : pinned_live_) pinned_bytes += b.block.bytes;
  if (pinned_->stats().live_bytes != pinned_bytes) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "pinned model disagrees: %d bytes live, the pinned allocator reports %d", pinned_bytes,
        pinned_->stats().live_bytes));
  }
  // Between ops no pool buffer is in use: the pools' memory is what they keep idle.
  const StagingPoolStats staging = staging_->stats();
  if (staging.in_use != 0 ||
      staging_pinned_->stats().live_bytes != staging.idle_bytes + staging.retained_bytes ||
      staging.idle_buffers > 4 || staging.acquires != staging.hits + staging.misses) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "staging pool disagrees: %d in use, %d idle buffers of %d bytes, %d retained of %d "
        "bytes, %d pinned bytes live, %d acquires = %d hits + %d misses",
        staging.in_use, staging.idle_buffers, staging.idle_bytes, staging.retained_buffers,
        staging.retained_bytes,
        staging_pinned_->stats().live_bytes, staging.acquires, staging.hits, staging.misses));
  }
  const KeyedCacheStats keyed = keyed_->stats();
  const MemoryStats keyed_memory = keyed_memory_->stats();
  if (keyed.in_use != 0 || keyed.idle_buffers > 8 ||
      keyed_memory.active_blocks.current != static_cast<std::int64_t>(keyed.idle_buffers) ||
      keyed_memory.requested_bytes.current != static_cast<std::int64_t>(keyed.idle_bytes) ||
      keyed_pinned_->stats().live_bytes > keyed.idle_buffers * (64 * 4 + kPinnedBlockAlignment)) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "keyed buffer cache disagrees: %d in use, %d idle buffers of %d bytes; its allocator has "
        "%d live of %d bytes, its result slots %d pinned bytes",
        keyed.in_use, keyed.idle_buffers, keyed.idle_bytes, keyed_memory.active_blocks.current,
        keyed_memory.requested_bytes.current, keyed_pinned_->stats().live_bytes));
  }
  GPUALLOC_RETURN_IF_ERROR(CheckSnapshot(keyed_memory_->Snapshot()));
  // Over the limit is allowed only while live allocations hold it there: no
  // wholly free segment may stay cached then. (A release the backend refused
  // under an injected fault suspends this until the next fault-free
  // EmptyCache or SetLimit, which must succeed at it.)
  if (!limit_check_suspended_ &&
      snap.stats.reserved_bytes.current > static_cast<std::int64_t>(cache_->reserved_limit())) {
    for (const SegmentSnapshot& s : snap.segments) {
      if (s.blocks.size() == 1 && s.blocks[0].state == BlockState::kFree) {
        return absl::FailedPreconditionError(absl::StrFormat(
            "reserved %d bytes is over the limit %d while segment %#x is wholly free",
            snap.stats.reserved_bytes.current, cache_->reserved_limit(), s.address));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status OpInterpreter::Apply(const Op& op) {
  history_.push_back(op);
  auto take_live = [&](std::uint64_t i) -> std::optional<Live> {
    if (live_.empty()) return std::nullopt;
    const std::size_t k = i % live_.size();
    Live l = live_[k];
    live_[k] = live_.back();
    live_.pop_back();
    return l;
  };
  auto free_live = [&](const Live& l, Stream on) -> absl::Status {
    GPUALLOC_RETURN_IF_ERROR(VerifyCookie(*device_, l.allocation, l.cookie,
                                          std::min(kCookieBytes, l.allocation.bytes)));
    absl::Status st = top_->Deallocate(l.allocation, on);
    if (st.ok()) return shadow_.Remove(l.allocation);
    if (!ExpectedFailure(st)) return st;
    live_.push_back(l);  // still allocated: freed later
    return absl::OkStatus();
  };

  absl::Status result = absl::OkStatus();
  switch (op.kind) {
    case OpKind::kAllocate: {
      const std::size_t bytes = std::max<std::uint64_t>(1, op.a);
      absl::StatusOr<Allocation> a = top_->Allocate(bytes, StreamAt(op.b));
      if (a.ok()) {
        Live l{*a, next_cookie_++, {}};
        result = shadow_.Add(*a, top_->alignment());
        if (result.ok()) {
          result = WriteCookie(*device_, *a, l.cookie, std::min(kCookieBytes, a->bytes));
        }
        live_.push_back(l);
      } else if (!ExpectedFailure(a.status())) {
        result = a.status();
      }
      break;
    }
    case OpKind::kFree:
      if (auto l = take_live(op.a)) result = free_live(*l, l->allocation.stream);
      break;
    case OpKind::kFreeOnOtherStream:
      if (auto l = take_live(op.a)) result = free_live(*l, StreamAt(op.b));
      break;
    case OpKind::kRecordUse:
      if (!live_.empty() && top_ == cache_) {  // only the cache hands out its own blocks
        absl::Status st = cache_->RecordStream(live_[op.a % live_.size()].allocation, StreamAt(op.b));
        if (!st.ok() && !ExpectedFailure(st)) result = st;
      }
      break;
    case OpKind::kSyncStream:
      result = device_->SynchronizeStream(StreamAt(op.b));
      break;
    case OpKind::kEmptyCache: {
      absl::Status st = cache_->EmptyCache(op.a << 16);
      if (!st.ok() && !ExpectedFailure(st)) result = st;
      break;
    }
    case OpKind::kSetLimit:
      result = cache_->SetReservedLimit(op.a == 0 ? 0 : std::max<std::uint64_t>(op.a << 16, 1 << 20));
      break;
    case OpKind::kInjectFault: {
      static constexpr BackendOp kTargets[] = {BackendOp::kMalloc, BackendOp::kFree,
                                               BackendOp::kEventRecord,
                                               BackendOp::kStreamWaitEvent};
      static constexpr FaultAction kActions[] = {FaultAction::kReturnError,
                                                 FaultAction::kThrowBadAlloc,
                                                 FaultAction::kThrowRuntimeError,
                                                 FaultAction::kThrowForeign};
      const BackendOp target = kTargets[op.a % 4];
      faulty_->AddRule(FaultRule::NthCall(target, faulty_->calls(target) + 1, kActions[(op.a / 4) % 4]));
      break;
    }
    case OpKind::kBadFree: {
      const MemoryStats before = top_->stats();
      absl::Status st;
      int on_stack = 0;
      if (op.a % 3 == 0 || live_.empty()) {
        st = top_->Deallocate(Allocation{&on_stack, 4, Stream::Default(0)});
      } else if (op.a % 3 == 1) {
        const Allocation& a = live_[op.b % live_.size()].allocation;
        st = top_->Deallocate(Allocation{a.ptr, a.bytes + 1, a.stream});
      } else {
        const Allocation& a = live_[op.b % live_.size()].allocation;
        st = top_->Deallocate(Allocation{static_cast<char*>(a.ptr) + 1, a.bytes, a.stream});
      }
      if (st.code() != absl::StatusCode::kInvalidArgument) {
        result = absl::FailedPreconditionError(absl::StrFormat(
            "a bad free was not rejected as InvalidArgument: %s", st.ToString()));
      } else if (top_->stats().allocated_bytes.current != before.allocated_bytes.current) {
        result = absl::FailedPreconditionError("a rejected bad free changed the allocator");
      }
      break;
    }
    case OpKind::kPinnedAllocate: {
      absl::StatusOr<PinnedBlock> b = pinned_->Allocate(std::max<std::uint64_t>(op.a, 1),
                                                        static_cast<DeviceIndex>(op.b % devices_));
      if (b.ok()) {
        const std::size_t n = std::min<std::size_t>(b->bytes, 64);
        result = device_->NoteHostAccess(b->ptr, n, AccessMode::kWrite);
        std::memset(b->ptr, 0x5A, n);  // host-accessible
        pinned_live_.push_back(LivePinned{*b, std::nullopt});
      } else if (!ExpectedFailure(b.status())) {
        result = b.status();
      }
      break;
    }
    case OpKind::kPinnedFree:
      if (!pinned_live_.empty()) {
        const std::size_t k = op.a % pinned_live_.size();
        result = pinned_->Deallocate(pinned_live_[k].block);  // whatever device is current
        if (!result.ok() && ExpectedFailure(result)) {
          result = absl::OkStatus();  // could not be ordered (a lost device): still live
        } else if (result.ok()) {
          pinned_live_[k] = pinned_live_.back();
          pinned_live_.pop_back();
        }
      }
      break;
    case OpKind::kSwitchDevice: {
      const DeviceIndex d = static_cast<DeviceIndex>(op.b % devices_);
      result = device_->SetDevice(d);
      if (result.ok()) pinned_->OnDeviceCurrent(d);
      break;
    }
    case OpKind::kCopy: {
      if (live_.size() < 2) break;
      Live& src = live_[op.a % live_.size()];
      Live& dst = live_[op.b % live_.size()];
      if (&src == &dst) break;
      const std::size_t n = std::min(kCookieBytes, dst.allocation.bytes);
      Transfers transfers(device_);
      const DeviceSpan to{dst.allocation.ptr, dst.allocation.bytes, dst.allocation.device()};
      const DeviceSpan from{src.allocation.ptr, src.allocation.bytes, src.allocation.device()};
      // Past the end of the destination: refused before anything is enqueued.
      absl::StatusOr<Completion> bad =
          transfers.DeviceToDevice(to, 1, from, 0, dst.allocation.bytes, dst.allocation.stream);
      if (bad.ok() || bad.status().code() != absl::StatusCode::kInvalidArgument) {
        result = absl::FailedPreconditionError("a copy past the end was not refused");
        break;
      }
      if (std::min(kCookieBytes, src.allocation.bytes) < n) break;  // would not cover the cookie
      // The copy writes dst's cookie on dst's stream: after every reader of it.
      result = JoinReaders(dst, dst.allocation.stream);
      if (!result.ok()) break;
      absl::StatusOr<Completion> copied =
          transfers.DeviceToDevice(to, 0, from, 0, n, dst.allocation.stream);
      result = copied.ok() ? copied->Wait() : copied.status();
      if (result.ok()) dst.cookie = src.cookie;  // the model follows the bytes
      break;
    }
    case OpKind::kSharedView: {
      absl::StatusOr<SharedMemory> m = SharedMemory::Allocate(top_, op.a, Stream::Default(0));
      if (!m.ok()) {
        if (!ExpectedFailure(m.status())) result = m.status();
        break;
      }
      const std::size_t offset = op.b % (op.a + 1);
      const bool in_range = m->View(offset, op.a - offset).ok();
      const bool wraps = m->View(~std::size_t{0} - op.b, 2 + op.b).ok();
      const bool past = m->View(offset, op.a - offset + 1).ok();
      if (!in_range || wraps || past) {
        result = absl::FailedPreconditionError(absl::StrFormat(
            "SharedMemory views of %d bytes at %d: in range %d, wrapping %d, past the end %d",
            op.a, offset, in_range, wraps, past));
      }
      break;  // `m` and its views are freed here, exactly once
    }
    case OpKind::kEnqueueWork: {
      if (live_.empty()) break;
      Live& l = live_[op.a % live_.size()];
      const Stream own = l.allocation.stream;
      const Stream on = StreamAt(op.b);
      auto [region, n] = WorkRegion(l.allocation);
      const bool write = (op.b >> 4) % 2 == 1 && n > 0;
      if (n == 0) std::tie(region, n) = std::pair<void*, std::size_t>{l.allocation.ptr, l.allocation.bytes};
      result = Order(own, on);  // used elsewhere only after the allocation's stream
      if (result.ok() && write) result = JoinReaders(l, on);  // and a write after every reader
      if (result.ok()) {
        result = Work(on, region, n, write ? AccessMode::kWrite : AccessMode::kRead, kWorkNs,
                      write ? "work_write" : "work_read");
      }
      if (result.ok() && on != own) {
        // The allocator must hear of the other stream, or the free must follow it.
        // A read may stay unjoined (RecordStream tells the allocator); a write
        // is always waited for by the allocation's stream.
        const bool record = top_ == cache_ && (op.a >> 12) % 2 == 0 && !write;
        result = record ? cache_->RecordStream(l.allocation, on) : Order(on, own);
        if (!result.ok() && ExpectedFailure(result)) {
          result = Order(on, own);
        } else if (result.ok() && record) {
          l.readers.push_back(on);
        }
      }
      break;
    }
    case OpKind::kWaitEvent:
      result = Order(StreamAt(op.a), StreamAt(op.b));
      break;
    case OpKind::kFreeInFlight:
      if (auto l = take_live(op.a)) {
        result = VerifyCookie(*device_, l->allocation, l->cookie,
                              std::min(kCookieBytes, l->allocation.bytes));
        // A last read of what only the allocation's stream writes (the cookie):
        // other streams' work on the rest was ordered or recorded already.
        if (result.ok()) {
          result = Work(l->allocation.stream, l->allocation.ptr,
                        std::min(kCookieBytes, l->allocation.bytes), AccessMode::kRead,
                        kWorkNs * 5, "last_read");
        }
        // The caching allocator waits for the allocation's stream when freed on
        // another; a pool or arena above it promises only the free stream.
        const Stream free_on = top_ == cache_ ? StreamAt(op.b) : l->allocation.stream;
        if (result.ok()) {
          absl::Status st = top_->Deallocate(l->allocation, free_on);
          if (st.ok()) {
            result = shadow_.Remove(l->allocation);
          } else if (ExpectedFailure(st)) {
            live_.push_back(*l);
          } else {
            result = st;
          }
        } else {
          live_.push_back(*l);
        }
      }
      break;
    case OpKind::kHostSync:
      result = device_->DeviceSynchronize(0);
      break;
    case OpKind::kPinnedCopy: {
      if (pinned_live_.empty() || live_.empty()) break;
      LivePinned& p = pinned_live_[op.a % pinned_live_.size()];
      Live& l = live_[op.b % live_.size()];
      auto [region, room] = WorkRegion(l.allocation);
      const std::size_t n = std::min(room, p.block.bytes);
      if (n == 0) break;
      const Stream on = l.allocation.stream;
      if ((op.b >> 12) % 2 == 0) {
        // The host fills the block first: any copy still using it must be done.
        if (p.used_on) result = device_->SynchronizeStream(*p.used_on);
        if (result.ok()) result = device_->NoteHostAccess(p.block.ptr, n, AccessMode::kWrite);
        if (!result.ok()) break;
        std::memset(p.block.ptr, static_cast<int>(op.a & 0xFF), n);
        result = JoinReaders(l, on);  // the copy writes the allocation
        if (result.ok()) {
          result = device_->MemcpyAsync(region, p.block.ptr, n, CopyKind::kHostToDevice, on);
        }
      } else {
        if (p.used_on && *p.used_on != on) result = Order(*p.used_on, on);
        if (result.ok()) {
          result = device_->MemcpyAsync(p.block.ptr, region, n, CopyKind::kDeviceToHost, on);
        }
      }
      if (result.ok()) result = pinned_->RecordStream(p.block, on);
      if (result.ok()) p.used_on = on;
      break;
    }
    case OpKind::kStagingReadback: {
      if (live_.empty()) break;
      const Live& l = live_[op.a % live_.size()];
      const std::size_t cookie = std::min(kCookieBytes, l.allocation.bytes);
      const std::size_t n = std::min<std::size_t>(
          l.allocation.bytes, std::max<std::size_t>(cookie, (op.b % 64) * 4096));
      const Stream on = l.allocation.stream;  // after every write to it (others join back)
      absl::StatusOr<StagingBuffer> buf = staging_->Acquire(n);
      if (!buf.ok()) {
        if (!ExpectedFailure(buf.status())) result = buf.status();
        break;
      }
      const DeviceSpan from{l.allocation.ptr, l.allocation.bytes, l.allocation.device()};
      absl::StatusOr<Completion> copied = buf->ReadBack(from, 0, n, on);
      if (!copied.ok()) {
        if (!ExpectedFailure(copied.status())) result = copied.status();
        break;
      }
      if ((op.a >> 12) % 2 == 1) break;  // back to the pool with the copy queued
      result = copied->Wait();
      std::vector<unsigned char> seen(cookie);
      if (result.ok()) result = buf->HostRead(0, seen.data(), cookie);
      if (result.ok()) result = CheckCookieBytes(l.allocation, l.cookie, seen.data(), cookie);
      if (!result.ok() && ExpectedFailure(result)) result = absl::OkStatus();
      break;
    }
    case OpKind::kKeyedReduce: {
      const std::size_t count = op.a % 64 + 1;
      const std::uint32_t purpose = (op.a >> 6) % 2;
      const Stream on = StreamAt(op.b);
      absl::StatusOr<KeyedBuffer<std::uint32_t>> b =
          keyed_->Acquire<std::uint32_t>(count, purpose, on);
      if (!b.ok()) {
        if (!ExpectedFailure(b.status())) result = b.status();
        break;
      }
      result = b->Zero();
      if (result.ok()) {
        result = Work(on, b->data(), count * sizeof(std::uint32_t), AccessMode::kWrite, kWorkNs,
                      "reduce");
      }
      if (result.ok() && (op.a >> 12) % 2 == 0) {
        // The result lands in the last slot after the kernel, in stream order.
        const std::uint32_t value = static_cast<std::uint32_t>(next_cookie_++);
        Transfers transfers(device_);
        absl::StatusOr<Completion> written = transfers.ToDevice(
            b->span(), (count - 1) * sizeof(value), &value, sizeof(value), on);
        result = written.ok() ? written->Wait() : written.status();
        absl::StatusOr<std::uint32_t> seen =
            result.ok() ? b->ReadResult(count - 1) : absl::StatusOr<std::uint32_t>(result);
        if (!seen.ok()) {
          result = seen.status();
        } else if (*seen != value) {
          result = absl::FailedPreconditionError(absl::StrFormat(
              "keyed buffer result slot %d read %#x, the device was given %#x", count - 1, *seen,
              value));
        }
      }
      if (!result.ok() && ExpectedFailure(result)) result = absl::OkStatus();
      break;  // back to the cache, its kernel maybe still in flight
    }
    case OpKind::kBridgeEcho: {
      if (bridges_.empty()) break;
      BridgeUnderTest& b = bridges_[op.b % bridges_.size()];
      RingBufferBridge& bridge = *b.bridge;
      for (std::uint64_t k = 0; k < op.a % 8 + 1; ++k) {
        const std::uint64_t m = next_cookie_++;
        if (!bridge.Push(&m).ok()) break;  // full: what waits is flushed first
        b.in_flight.push_back(m);
      }
      absl::StatusOr<std::size_t> flushed = bridge.FlushToDevice();
      if (!flushed.ok()) {
        if (!ExpectedFailure(flushed.status())) result = flushed.status();
        break;  // kept for the next flush
      }
      // The device's side: a kernel reads the messages, then a copy echoes
      // the whole ring (count and slots) into the to-host ring.
      const DeviceRing in = bridge.to_device();
      const DeviceRing out = bridge.to_host();
      const std::size_t ring_bytes = RingBufferBridge::kHeaderBytes + in.capacity * in.message_bytes;
      result = Work(bridge.stream(), in.header, ring_bytes, AccessMode::kRead, kWorkNs, "consume");
      if (result.ok()) {
        result = device_->MemcpyAsync(out.header, in.header, ring_bytes, CopyKind::kDeviceToDevice,
                                      bridge.stream());
      }
      if (!result.ok()) break;
      std::vector<std::uint64_t> back;
      absl::StatusOr<std::size_t> drained = bridge.DrainToHost([&](const void* p) {
        std::uint64_t m = 0;
        std::memcpy(&m, p, sizeof(m));
        back.push_back(m);
      });
      if (!drained.ok() && !ExpectedFailure(drained.status())) {
        result = drained.status();
        break;
      }
      for (std::uint64_t m : back) {
        if (b.in_flight.empty() || b.in_flight.front() != m) {
          result = absl::FailedPreconditionError(absl::StrFormat(
              "bridge (%s) handed back message %#x, but %s was next", TransferStrategyName(bridge.strategy()),
              m, b.in_flight.empty() ? "none" : absl::StrFormat("%#x", b.in_flight.front())));
          break;
        }
        b.in_flight.pop_front();
      }
      if (result.ok() && drained.ok() && !b.in_flight.empty()) {
        result = absl::FailedPreconditionError(absl::StrFormat(
            "bridge (%s): %d messages flushed and echoed did not come back",
            TransferStrategyName(bridge.strategy()), b.in_flight.size()));
      }
      break;
    }
    case OpKind::kPeerCopy: {
      if (live_.empty() || peer_cache_ == nullptr) break;
      Live& l = live_[op.a % live_.size()];
      const std::size_t n = std::min(kCookieBytes, l.allocation.bytes);
      absl::StatusOr<DeviceBuffer> there = DeviceBuffer::Create(peer_cache_, n, peer_stream_);
      if (!there.ok()) {
        if (!ExpectedFailure(there.status())) result = there.status();
        break;
      }
      // Device 1 reads the allocation after its own stream's work: a peer
      // copy, checked, then device 1's work on it left in flight (a kernel
      // through peer access, or another copy) when the op ends.
      Transfers transfers(device_);
      const DeviceSpan from{l.allocation.ptr, l.allocation.bytes, l.allocation.device()};
      std::vector<unsigned char> seen(n);
      result = Order(l.allocation.stream, peer_stream_);
      if (result.ok()) {
        result = transfers.PeerToPeer(Span(*there), 0, from, 0, n, peer_stream_).status();
      }
      if (result.ok()) result = transfers.ToHostSync(seen.data(), Span(*there), 0, n, peer_stream_);
      if (result.ok()) result = CheckCookieBytes(l.allocation, l.cookie, seen.data(), n);
      if (!result.ok()) break;
      const bool kernel = op.b % 2 == 1 && device_->CanAccessPeer(1, 0).value_or(false);
      if (kernel) {
        result = device_->EnablePeerAccess(1, 0);
        if (result.ok()) {
          result = Work(peer_stream_, l.allocation.ptr, l.allocation.bytes, AccessMode::kRead,
                        kWorkNs * 5, "peer_read");
        }
      } else {
        result = transfers.PeerToPeer(Span(*there), 0, from, 0, n, peer_stream_).status();
      }
      if (result.ok()) {
        // The allocator hears of device 1's stream (or the allocation's
        // stream waits for it), as for any other stream's use.
        const bool record = top_ == cache_;
        result = record ? cache_->RecordStream(l.allocation, peer_stream_)
                        : Order(peer_stream_, l.allocation.stream);
        if (!result.ok() && ExpectedFailure(result)) {
          result = Order(peer_stream_, l.allocation.stream);
        } else if (result.ok() && record) {
          l.readers.push_back(peer_stream_);
        }
      }
      break;  // `there` freed on device 1's stream, after its copies
    }
    case OpKind::kCount:
      break;
  }
  const std::uint64_t faults = faulty_->faults_fired();
  if (faults != faults_seen_) {
    faults_seen_ = faults;
    limit_check_suspended_ = true;
  } else if (op.kind == OpKind::kEmptyCache || op.kind == OpKind::kSetLimit) {
    limit_check_suspended_ = false;
  }
  if (result.ok()) result = Check();
  return result.ok() ? result : Violation(result);
}

absl::Status OpInterpreter::Finish() {
  if (finished_) return absl::OkStatus();
  finished_ = true;
  faulty_->ClearRules();
  faulty_->ClearStickyError();  // a lost device is "reset" before the final checks
  absl::Status result = absl::OkStatus();
  for (const Live& l : live_) {
    absl::Status st = VerifyCookie(*device_, l.allocation, l.cookie, std::min(kCookieBytes, l.allocation.bytes));
    if (st.ok()) st = top_->Deallocate(l.allocation);
    if (st.ok()) st = shadow_.Remove(l.allocation);
    if (!st.ok() && result.ok()) result = st;
  }
  live_.clear();
  for (const LivePinned& b : pinned_live_) {
    if (absl::Status st = pinned_->Deallocate(b.block); !st.ok() && result.ok()) result = st;
  }
  pinned_live_.clear();
  if (result.ok()) result = Check();
  // The pools give their buffers back (after their copies and kernels).
  if (absl::Status st = staging_->Trim(); !st.ok() && result.ok()) result = st;
  if (absl::Status st = keyed_->Trim(); !st.ok() && result.ok()) result = st;
  staging_.reset();
  keyed_.reset();
  bridges_.clear();  // waits for their streams, then frees the rings
  if (absl::Status st = bridge_memory_->EmptyCache(); !st.ok() && result.ok()) result = st;
  bridge_memory_.reset();
  bridge_pinned_.reset();
  if (absl::Status st = keyed_memory_->EmptyCache(); !st.ok() && result.ok()) result = st;
  keyed_memory_.reset();
  staging_pinned_.reset();
  keyed_pinned_.reset();
  pinned_.reset();  // releases every queued and cached block
  top_.reset();     // a pool or arena gives its slabs and chunks back to the cache
  if (absl::Status st = cache_->EmptyCache(); !st.ok() && result.ok()) result = st;
  cache_.reset();
  if (peer_cache_ != nullptr) {
    if (absl::Status st = peer_cache_->EmptyCache(); !st.ok() && result.ok()) result = st;
    peer_cache_.reset();
  }
  stream_pool_.reset();  // destroys the streams, each after its work
  reads_.reset();  // frees their scratch before the leak check
  if (sim_) {
    if (result.ok()) result = CheckStreamOrder(*sim_);
    const SimAccounting acc = sim_->Accounting();
    if (result.ok() && (!acc.AllReleased() || acc.guard_violations != 0)) {
      result = absl::FailedPreconditionError("leak at teardown: " + acc.Describe());
    }
  } else if (result.ok()) {
    // A real device: its free memory is back, within what the runtime keeps.
    constexpr std::size_t kRuntimeSlack = 64u << 20;
    GPUALLOC_RETURN_IF_ERROR(device_->DeviceSynchronize(0));
    absl::StatusOr<MemoryInfo> info = device_->GetMemoryInfo(0);
    if (!info.ok()) {
      result = info.status();
    } else if (info->free_bytes + kRuntimeSlack < free_before_) {
      result = absl::FailedPreconditionError(absl::StrFormat(
          "leak at teardown: the device has %d bytes less free than at the start",
          free_before_ - info->free_bytes));
    }
  }
  return result.ok() ? result : Violation(result);
}

}  // namespace gpualloc::harness
