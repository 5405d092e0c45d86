#include <atomic>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "allocator/backend/failpoints/failpoint_backend.h"
#include "allocator/backend/sim/sim_backend.h"
#include "allocator/caching/caching_allocator.h"
#include "allocator/observe/trace_format.h"
#include "allocator/observe/trace_recorder.h"
#include "allocator/observe/tracking_adaptor.h"
#include "allocator/policy/allocation_tag.h"
#include "allocator/resource/backend_resource.h"
#include "gtest/gtest.h"
#include "harness/testing/failing_memory_resource.h"

namespace gpualloc {
namespace {

std::shared_ptr<CachingAllocator> Cache() {
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(1, 128 << 20));
  return CachingAllocator::Create(sim, 0, {}).value();
}

__attribute__((noinline)) Allocation LeakFromHere(TrackingAdaptor& t) {
  return t.Allocate(3 << 20).value();
}

TEST(TrackingAdaptor, ReportsLeaksGroupedByTagAndSite) {
  auto cache = Cache();
  TrackingAdaptor tracked(cache, TrackingOptions{.capture_stacks = true});
  EXPECT_EQ(tracked.Report(), "No leaks.\n");
  std::vector<Allocation> keep;
  {
    ScopedAllocationTag tag("kv-cache");
    for (int i = 0; i < 2; ++i) keep.push_back(tracked.Allocate(1 << 20).value());  // one site
  }
  keep.push_back(LeakFromHere(tracked));
  Allocation freed = tracked.Allocate(4096).value();
  ASSERT_TRUE(tracked.Deallocate(freed).ok());
  const std::string report = tracked.Report();
  EXPECT_NE(report.find("3 leaked allocations (5.0 MiB)"), std::string::npos) << report;
  EXPECT_NE(report.find("tag \"kv-cache\": 2 allocations, 2.0 MiB"), std::string::npos) << report;
  EXPECT_NE(report.find("LeakFromHere"), std::string::npos) << "symbolised call site\n" << report;
  EXPECT_EQ(tracked.live_count(), 3u);
  int local = 0;
  EXPECT_FALSE(tracked.Deallocate(Allocation{&local, 4, Stream::Default(0)}).ok());
  for (const Allocation& a : keep) ASSERT_TRUE(tracked.Deallocate(a).ok());
  EXPECT_EQ(tracked.Report(), "No leaks.\n");
}

// Over the caching allocator, with stacks off, the adaptor keeps no table:
// the allocator records order and tag in its blocks, under its own lock.
TEST(TrackingAdaptor, OverARecordingAllocatorItKeepsNoTableAndListsEveryLiveAllocation) {
  auto cache = Cache();
  Allocation before = cache->Allocate(4096).value();  // made before tracking: not listed
  harness::FailingMemoryResource metadata;
  metadata.FailAll();  // a table of the adaptor's own could not allocate a node
  TrackingAdaptor tracked(cache, TrackingOptions{.metadata_resource = &metadata});
  Allocation weights = [&] {
    ScopedAllocationTag tag("weights");
    return tracked.Allocate(1 << 20).value();
  }();
  Allocation untagged = tracked.Allocate(8192).value();
  Allocation direct = [&] {
    ScopedAllocationTag tag("kv-cache");
    return cache->Allocate(3 << 20).value();  // on the allocator itself: listed too
  }();
  std::vector<TrackedAllocation> live = tracked.Live();
  ASSERT_EQ(live.size(), 3u);
  EXPECT_EQ(live[0].allocation, weights);
  EXPECT_EQ(live[0].tag, "weights");
  EXPECT_EQ(live[1].allocation, untagged);
  EXPECT_EQ(live[1].tag, "");
  EXPECT_EQ(live[2].allocation, direct);
  EXPECT_EQ(live[2].tag, "kv-cache");
  EXPECT_LT(live[0].sequence, live[1].sequence);
  EXPECT_LT(live[1].sequence, live[2].sequence);
  EXPECT_EQ(tracked.live_count(), 3u);
  const std::string report = tracked.Report();
  EXPECT_NE(report.find("3 leaked allocations (4.0 MiB)"), std::string::npos) << report;
  EXPECT_NE(report.find("tag \"kv-cache\": 1 allocations, 3.0 MiB"), std::string::npos) << report;
  int local = 0;
  EXPECT_EQ(tracked.Deallocate(Allocation{&local, 4, Stream::Default(0)}).code(),
            absl::StatusCode::kInvalidArgument)
      << "a foreign free, rejected by the allocator";
  ASSERT_TRUE(tracked.Deallocate(weights).ok());
  EXPECT_EQ(tracked.Deallocate(weights).code(), absl::StatusCode::kInvalidArgument) << "twice";
  ASSERT_TRUE(cache->Deallocate(direct).ok());
  live = tracked.Live();
  ASSERT_EQ(live.size(), 1u);
  EXPECT_EQ(live[0].allocation, untagged);
  // A block reused after a recorded free gets a new sequence number and tag.
  Allocation again = [&] {
    ScopedAllocationTag tag("activations");
    return tracked.Allocate(1 << 20).value();
  }();
  live = tracked.Live();
  ASSERT_EQ(live.size(), 2u);
  EXPECT_EQ(live[1].allocation, again);
  EXPECT_EQ(live[1].tag, "activations");
  EXPECT_GT(live[1].sequence, live[0].sequence);
  ASSERT_TRUE(tracked.Deallocate(again).ok());
  ASSERT_TRUE(tracked.Deallocate(untagged).ok());
  EXPECT_EQ(tracked.Report(), "No leaks.\n");
  EXPECT_EQ(metadata.failures(), 0u) << "the adaptor allocated bookkeeping of its own";
  ASSERT_TRUE(cache->Deallocate(before).ok());
}

// With own_table, the adaptor lists only what passes through it, whatever
// the upstream can record.
TEST(TrackingAdaptor, WithATableOfItsOwnItListsOnlyWhatPassesThroughIt) {
  auto cache = Cache();
  TrackingAdaptor tracked(cache, TrackingOptions{.own_table = true});
  Allocation mine = tracked.Allocate(4096).value();
  Allocation direct = cache->Allocate(4096).value();
  const std::vector<TrackedAllocation> live = tracked.Live();
  ASSERT_EQ(live.size(), 1u);
  EXPECT_EQ(live[0].allocation, mine);
  EXPECT_EQ(tracked.Deallocate(direct).code(), absl::StatusCode::kInvalidArgument)
      << "not one it saw";
  ASSERT_TRUE(cache->Deallocate(direct).ok());
  ASSERT_TRUE(tracked.Deallocate(mine).ok());
  EXPECT_EQ(tracked.live_count(), 0u);
}

class TrackingModes : public testing::TestWithParam<bool> {};

TEST_P(TrackingModes, ConcurrentUseKeepsTheTableExact) {
  auto cache = Cache();
  // The allocator's recorder, or the adaptor's own table.
  TrackingAdaptor tracked(cache, TrackingOptions{.own_table = GetParam()});
  std::atomic<bool> done{false};
  // A reader of the table (a leak report mid-run) races the writers.
  std::thread reader([&] {
    while (!done.load()) {
      EXPECT_LE(tracked.Live().size(), 4u);
      EXPECT_FALSE(tracked.Report().empty());
      EXPECT_LE(tracked.live_count(), 4u);
    }
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 300; ++i) {
        Allocation a = tracked.Allocate(256 + i).value();
        EXPECT_TRUE(tracked.Deallocate(a).ok());
      }
    });
  }
  for (auto& th : threads) th.join();
  done = true;
  reader.join();
  EXPECT_EQ(tracked.live_count(), 0u);
}

INSTANTIATE_TEST_SUITE_P(TrackingAdaptor, TrackingModes, testing::Values(false, true),
                         [](const testing::TestParamInfo<bool>& p) {
                           return p.param ? "OwnTable" : "AllocatorRecorder";
                         });

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(TraceRecorder, RecordsEveryAllocateAndFreeForReplay) {
  const std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/t.trace";
  auto cache = Cache();
  {
    auto recorder = TraceRecorder::Create(cache, path).value();
    Allocation a = recorder->Allocate(1000).value();
    Allocation b = recorder->Allocate(2000).value();
    ASSERT_TRUE(recorder->Deallocate(a).ok());
    EXPECT_FALSE(recorder->Deallocate(a).ok()) << "double free is rejected, not recorded";
    ASSERT_TRUE(recorder->Deallocate(b).ok());
    EXPECT_EQ(recorder->events_recorded(), 4u);
  }
  absl::StatusOr<std::vector<TraceEvent>> events = ParseTrace(ReadFile(path));
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), 4u);
  EXPECT_EQ((*events)[0].action, TraceEvent::Action::kAllocate);
  EXPECT_EQ((*events)[0].size, 1000u);
  EXPECT_EQ((*events)[2].action, TraceEvent::Action::kFree);
  EXPECT_EQ((*events)[2].id, (*events)[0].id);
  EXPECT_LE((*events)[0].time_ns, (*events)[3].time_ns);
  EXPECT_TRUE(ValidateTrace(*events).ok());
  EXPECT_FALSE(TraceRecorder::Create(cache, "/nonexistent-dir/x.trace").ok());
}

// An upstream whose frees fail (a device gone, say): a stand-in resource,
// since no shipped one fails a free of its own live block on demand.
class RefusingFrees final : public MemoryResource {
 public:
  explicit RefusingFrees(std::shared_ptr<MemoryResource> inner) : inner_(std::move(inner)) {}
  bool refuse = false;
  absl::string_view name() const override { return "refusing-frees"; }
  DeviceIndex device() const override { return inner_->device(); }
  std::size_t alignment() const override { return inner_->alignment(); }
  MemoryStats stats() const override { return inner_->stats(); }

 private:
  absl::StatusOr<Allocation> DoAllocate(std::size_t bytes, Stream stream) override {
    return inner_->Allocate(bytes, stream);
  }
  absl::Status DoDeallocate(const Allocation& allocation, Stream stream) override {
    if (refuse) return absl::UnavailableError("refusing-frees: device lost");
    return inner_->Deallocate(allocation, stream);
  }
  std::shared_ptr<MemoryResource> inner_;
};

// The observers pass an upstream's failed free back to the caller, and keep
// the block live (it still is), so a later free succeeds.
TEST(TraceRecorder, EveryMetadataAllocationFailureRecordsNothingAndLeaksNothing) {
  // Each allocation of the live-id and thread tables fails in turn (a second
  // thread makes a new thread entry): the Allocate that meets it fails, the
  // upstream allocation is given back, and the trace stays one a replay
  // accepts.
  const std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/m.trace";
  std::uint64_t k = 1;
  for (;; ++k) {
    auto cache = Cache();
    harness::FailingMemoryResource metadata;
    {
      auto recorder = TraceRecorder::Create(cache, path, &metadata).value();
      metadata.FailAt(k);
      auto one = [&](std::vector<Allocation>* live) {
        const std::int64_t upstream = cache->stats().allocated_bytes.current;
        const std::uint64_t events = recorder->events_recorded();
        const std::uint64_t failed = metadata.failures();
        absl::StatusOr<Allocation> a = recorder->Allocate(4096);
        if (!a.ok()) {
          EXPECT_EQ(metadata.failures(), failed + 1) << a.status();
          EXPECT_EQ(a.status().code(), absl::StatusCode::kResourceExhausted) << a.status();
          EXPECT_EQ(cache->stats().allocated_bytes.current, upstream) << "upstream memory kept";
          EXPECT_EQ(recorder->events_recorded(), events) << "an allocation that failed was recorded";
          a = recorder->Allocate(4096);
        }
        ASSERT_TRUE(a.ok()) << a.status();
        live->push_back(*a);
      };
      std::vector<Allocation> live;
      one(&live);
      one(&live);
      std::thread([&] { one(&live); }).join();
      for (const Allocation& a : live) {
        absl::Status st = recorder->Deallocate(a);
        ASSERT_TRUE(st.ok()) << st;
      }
    }
    absl::StatusOr<std::vector<TraceEvent>> events = ParseTrace(ReadFile(path));
    ASSERT_TRUE(events.ok()) << events.status();
    EXPECT_EQ(events->size(), 6u);
    EXPECT_TRUE(ValidateTrace(*events).ok());
    EXPECT_EQ(metadata.outstanding_bytes(), 0u) << "metadata leaked at k=" << k;
    ASSERT_FALSE(HasFailure()) << "first failure at k=" << k;
    if (metadata.failures() == 0) break;
  }
  EXPECT_GE(k, 4u) << "id and thread entries must all have been failed";
}

TEST(TraceRecorder, AFailedUpstreamFreeIsReturnedAndTheBlockStaysLive) {
  const std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/failed_free.trace";
  auto upstream = std::make_shared<RefusingFrees>(Cache());
  auto recorder = TraceRecorder::Create(upstream, path).value();
  Allocation a = recorder->Allocate(1000).value();
  upstream->refuse = true;
  const absl::Status st = recorder->Deallocate(a);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  upstream->refuse = false;
  EXPECT_TRUE(recorder->Deallocate(a).ok()) << "still live after the failed free";
  recorder.reset();
  absl::StatusOr<std::vector<TraceEvent>> events = ParseTrace(ReadFile(path));
  ASSERT_TRUE(events.ok()) << events.status();
  EXPECT_TRUE(ValidateTrace(*events).ok()) << "the trace stays replayable";

  TrackingAdaptor tracked(upstream);
  Allocation b = tracked.Allocate(2048).value();
  upstream->refuse = true;
  EXPECT_EQ(tracked.Deallocate(b).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(tracked.live_count(), 1u);
  EXPECT_NE(tracked.Report().find("(2.0 KiB)"), std::string::npos) << tracked.Report();
  upstream->refuse = false;
  EXPECT_TRUE(tracked.Deallocate(b).ok());
}

// The binary format is recognised by its magic alone; a file cut inside the
// header, or with another magic, is refused as such.
TEST(TraceFormat, HeaderOnlyShortAndForeignFilesAreToldApart) {
  const std::string header = EncodeTraceHeader();
  ASSERT_EQ(header.size(), kTraceHeaderBytes);
  absl::StatusOr<std::vector<TraceEvent>> empty = ParseTrace(header);
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE(empty->empty());
  for (std::size_t cut : {std::size_t{8}, kTraceHeaderBytes - 1}) {
    const absl::Status st = ParseTrace(header.substr(0, cut)).status();
    EXPECT_NE(st.message().find("GPUTRACE"), absl::string_view::npos) << cut << ": " << st;
    EXPECT_NE(st.message().find("offset 0"), absl::string_view::npos) << cut << ": " << st;
  }
  std::string foreign = header;
  foreign[0] = 'X';
  const absl::Status st = DecodeTrace(foreign).status();
  EXPECT_NE(st.message().find("bad magic"), absl::string_view::npos) << st;
}

// Sizes in reports switch units exactly at 1 KiB and 1 MiB.
TEST(TrackingAdaptor, EveryMetadataAllocationFailureTracksNothingAndLeaksNothing) {
  // Each allocation of the tables' nodes fails in turn, with stacks and a new
  // tag: the Allocate that meets it fails, the upstream allocation is given
  // back, the table is as it was and keeps working.
  std::uint64_t k = 1;
  for (;; ++k) {
    auto cache = Cache();
    harness::FailingMemoryResource metadata;
    {
      TrackingAdaptor tracked(cache, TrackingOptions{.capture_stacks = true,
                                                     .metadata_resource = &metadata});
      std::vector<Allocation> live;
      metadata.FailAt(k);
      for (const char* tag : {"weights", "weights", "activations"}) {
        SCOPED_TRACE(testing::Message() << tag << ", failure at allocation " << k);
        ScopedAllocationTag scope(tag);
        const std::size_t count = tracked.live_count();
        const std::int64_t allocated = cache->stats().allocated_bytes.current;
        const std::uint64_t failed = metadata.failures();
        absl::StatusOr<Allocation> a = tracked.Allocate(64 << 10);
        if (!a.ok()) {
          EXPECT_EQ(metadata.failures(), failed + 1) << a.status();
          EXPECT_EQ(a.status().code(), absl::StatusCode::kResourceExhausted) << a.status();
          EXPECT_EQ(tracked.live_count(), count);
          EXPECT_EQ(cache->stats().allocated_bytes.current, allocated) << "upstream memory kept";
          a = tracked.Allocate(64 << 10);
        }
        ASSERT_TRUE(a.ok()) << a.status();
        live.push_back(*a);
      }
      const std::vector<TrackedAllocation> table = tracked.Live();
      ASSERT_EQ(table.size(), 3u);
      EXPECT_EQ(table[0].tag, "weights");
      EXPECT_EQ(table[2].tag, "activations");
      EXPECT_FALSE(table[2].stack.empty());
      for (const Allocation& a : live) ASSERT_TRUE(tracked.Deallocate(a).ok());
      EXPECT_EQ(tracked.live_count(), 0u);
    }
    EXPECT_EQ(metadata.outstanding_bytes(), 0u) << "metadata leaked at k=" << k;
    ASSERT_FALSE(HasFailure()) << "first failure at k=" << k;
    if (metadata.failures() == 0) break;
  }
  EXPECT_GE(k, 5u) << "entries, stacks and tags must all have been failed";
}

TEST(TrackingAdaptor, AFailedUpstreamFreeKeepsItsEntryWithoutAllocating) {
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(1, 128 << 20));
  auto faulty = std::make_shared<FailpointBackend>(sim, 1);
  auto raw = std::make_shared<BackendResource>(faulty, 0);
  harness::FailingMemoryResource metadata;
  {
    TrackingAdaptor tracked(raw, TrackingOptions{.capture_stacks = true,
                                                 .metadata_resource = &metadata});
    Allocation a = [&] {
      ScopedAllocationTag scope("kv-cache");
      return tracked.Allocate(4096).value();
    }();
    faulty->AddRule(FaultRule::NthCall(BackendOp::kFree, 1, FaultAction::kReturnError));
    metadata.FailAll();  // putting the entry back must not need memory
    EXPECT_FALSE(tracked.Deallocate(a).ok());
    metadata.FailNone();
    const std::vector<TrackedAllocation> table = tracked.Live();
    ASSERT_EQ(table.size(), 1u) << "still live upstream, so still tracked";
    EXPECT_EQ(table[0].tag, "kv-cache");
    EXPECT_FALSE(table[0].stack.empty()) << "with its stack";
    ASSERT_TRUE(tracked.Deallocate(a).ok());
    EXPECT_EQ(tracked.live_count(), 0u);
  }
  EXPECT_EQ(metadata.outstanding_bytes(), 0u);
  EXPECT_TRUE(sim->Accounting().AllReleased()) << sim->Accounting().Describe();
}

TEST(TrackingAdaptor, ReportsSizesInTheUnitTheyReach) {
  auto cache = Cache();
  TrackingAdaptor tracked(cache);
  for (const auto& [bytes, says] : std::vector<std::pair<std::size_t, std::string>>{
           {1023, "(1023 B)"}, {1024, "(1.0 KiB)"}, {(1 << 20) - 512, "(1023.5 KiB)"},
           {1 << 20, "(1.0 MiB)"}}) {
    Allocation a = tracked.Allocate(bytes).value();
    EXPECT_NE(tracked.Report().find(says), std::string::npos) << bytes << ": " << tracked.Report();
    ASSERT_TRUE(tracked.Deallocate(a).ok());
  }
}

TEST(TraceFormat, CorruptAndTruncatedFilesNameTheOffendingOffset) {
  std::string trace = EncodeTraceHeader();
  TraceEvent e;
  e.size = 64;
  AppendTraceRecord(e, &trace);
  ASSERT_TRUE(DecodeTrace(trace).ok());
  absl::Status truncated = DecodeTrace(trace.substr(0, trace.size() - 5)).status();
  EXPECT_NE(truncated.message().find("offset 16: truncated record"), absl::string_view::npos) << truncated;
  std::string bad_action = trace;
  bad_action[16 + 12] = 7;
  EXPECT_NE(DecodeTrace(bad_action).status().message().find("offset 16: action 7"), absl::string_view::npos);
  std::string bad_version = trace;
  bad_version[8] = 9;
  EXPECT_NE(DecodeTrace(bad_version).status().message().find("offset 8"), absl::string_view::npos);
  EXPECT_FALSE(DecodeTrace("GPUTRAC").ok());
  std::string double_free = trace;
  e.action = TraceEvent::Action::kFree;
  AppendTraceRecord(e, &double_free);
  AppendTraceRecord(e, &double_free);
  absl::Status invalid = ValidateTrace(DecodeTrace(double_free).value());
  EXPECT_NE(invalid.message().find("record 2: free of id 0, which is not live"), absl::string_view::npos) << invalid;
}

TEST(TraceFormat, ReadsRmmLoggingAdaptorCsv) {
  const std::string csv =
      "Thread,Time,Action,Pointer,Size,Stream\n"
      "140211347207936,06:56:01:727098,allocate,0x7f8a3c000000,1024,0x0\n"
      "140211347207936,06:56:01:727100,allocate failure,0x0,1099511627776,0x0\n"
      "140211338815232,06:56:01:727110,allocate,0x7f8a3c000400,2048,0x55d0\n"
      "140211347207936,06:56:01:727200,free,0x7f8a3c000000,1024,0x0\n";
  absl::StatusOr<std::vector<TraceEvent>> events = ParseTrace(csv);
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), 3u);
  EXPECT_EQ((*events)[1].thread, 1u);
  EXPECT_EQ((*events)[1].stream, 0x55d0u);
  EXPECT_EQ((*events)[2].action, TraceEvent::Action::kFree);
  EXPECT_EQ((*events)[2].id, (*events)[0].id);
  EXPECT_EQ((*events)[2].time_ns - (*events)[0].time_ns, 102'000u);
  auto error_at = [](const std::string& text) { return std::string(ParseRmmCsv(text).status().message()); };
  EXPECT_NE(error_at("Thread,Time\n").find("line 1: expected the header"), std::string::npos);
  EXPECT_NE(error_at("Thread,Time,Action,Pointer,Size,Stream\nx,06:00:00:1,allocate,0x10,zz,0x0\n")
                .find("line 2: size 'zz'"), std::string::npos);
  EXPECT_NE(error_at("Thread,Time,Action,Pointer,Size,Stream\n1,06:00:00:1,free,0x10,4,0x0\n")
                .find("line 2: free of 0x10, which is not live"), std::string::npos);
  EXPECT_NE(error_at("Thread,Time,Action,Pointer,Size,Stream\n1,6am,allocate,0x10,4,0x0\n")
                .find("line 2: time '6am'"), std::string::npos);
  EXPECT_NE(error_at("").find("empty"), std::string::npos);
}

}  // namespace
}  // namespace gpualloc
