// The benchmark suite: `./bazelw run -c opt //harness/bench` (ci/bench.sh
// writes docs/performance.md from it). Every allocator of
// bench_allocator.h runs every workload below, in one binary and one run, and
// the end of the output is a Markdown report: ns/op, ratios to mimalloc and
// to std::pmr::synchronized_pool_resource, and the suite's goals with what was
// measured. Speed goals live here, never in timed tests.
//
// Workloads (names as in the report):
//  1. pair_<size>: allocate + free of one size, single thread.
//  2. random: RMM's random_allocations: log-uniform 256 B .. 64 MiB, random
//     frees, at most 64 live; one op per iteration, after a full warm-up pass
//     (steady state), device calls counted per 1,000 ops.
//  3. random_1t / random_2t: the same, one sequence per thread on 4 streams of
//     its own, sharing one allocator.
//  4. holes_<n>: 1 KiB pairs with n free holes that cannot merge in the pool.
//  5. replay_training / replay_serving: generated traces (seeded,
//     harness/trace/trace_generator.h); peak reserved ÷ peak live reported.
// Plus: tracking_pair_256B and tracking_random (TrackingAdaptor cost on the
// cheapest operation and on workload 2), stats_read (one stats() call, as a
// monitoring poll makes it), metadata_64KiB (our host bookkeeping per
// managed byte), pinned_bound_<n>MiB (workload 2 on the pinned host
// allocator with an n MiB cache bound: device calls against peak memory).
//
// Extra flags (before Google Benchmark's own): --markdown=FILE, --svg=FILE.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "harness/bench/bench_allocator.h"
#include "harness/bench/bench_report.h"
#include "harness/bench/bench_workloads.h"
#include "harness/bench/new_counter.h"

namespace gpualloc::bench {
namespace {

constexpr int kStreamsPerThread = 4;
// Thread counts beyond two, run where the host has that many cores.
constexpr int kMoreThreads[] = {4, 8, 16, 32, 64};
constexpr std::size_t kRandomOps = 20000;

const std::vector<std::string> kWorkloads = {
    "pair_256B",   "pair_64KiB",  "pair_4MiB",       "random",         "random_1t",
    "random_2t",   "holes_4096",  "holes_16384",     "holes_65536",    "replay_training",
    "replay_serving", "tracking_pair_256B", "tracking_random", "stats_read",
    "metadata_64KiB"};
// Cache bounds the pinned host allocator runs workload 2 with (its default,
// PinnedHostOptions::cache_limit_bytes, among them).
const std::vector<std::size_t> kPinnedBoundsMiB = {128, 256, 512, 1024, 4096};
const std::vector<std::string> kPlotted = {"pair_256B", "pair_64KiB", "pair_4MiB", "random",
                                           "random_2t", "holes_65536", "replay_training",
                                           "replay_serving"};

std::unique_ptr<BenchAllocator> MakeOrSkip(benchmark::State& state,
                                           absl::StatusOr<std::unique_ptr<BenchAllocator>> made) {
  if (!made.ok()) {
    state.SkipWithError(std::string(made.status().message()).c_str());
    return nullptr;
  }
  return *std::move(made);
}

void Pairs(benchmark::State& state, std::unique_ptr<BenchAllocator> a, std::size_t bytes) {
  if (a == nullptr) return;
  // Steady state: the first pair pays for the first segment (and, on a real
  // device, the context), which no later pair does.
  a->Deallocate(a->Allocate(bytes, 0), bytes, 0);
  for (auto _ : state) {
    void* p = a->Allocate(bytes, 0);
    benchmark::DoNotOptimize(p);
    if (p == nullptr) {
      state.SkipWithError("allocation failed");
      break;
    }
    a->Deallocate(p, bytes, 0);
  }
  state.SetItemsProcessed(state.iterations());
}

// One operation of `seq` per iteration, cycling; warm-up pass first.
void Sequence(benchmark::State& state, BenchAllocator* a, const OpSequence& seq) {
  if (a == nullptr) return;
  std::vector<void*> slots(seq.slots, nullptr);
  const std::size_t n = seq.ops.size();
  RunOps(*a, seq, 0, n, slots);
  const std::int64_t calls_before = a->UpstreamCalls();
  std::size_t i = 0;
  for (auto _ : state) {
    RunOps(*a, seq, i, i + 1, slots);
    if (++i == n) i = 0;
  }
  const std::int64_t calls = a->UpstreamCalls() - calls_before;
  RunOps(*a, seq, i, n, slots);
  const auto iterations = static_cast<double>(state.iterations());
  if (calls_before >= 0 && iterations > 0) {
    state.counters["upstream_per_kop"] = static_cast<double>(calls) * 1000 / iterations;
  }
  if (const std::int64_t peak = a->PeakReservedBytes(); peak >= 0 && seq.peak_live_bytes > 0) {
    state.counters["fragmentation"] =
        static_cast<double>(peak) / static_cast<double>(seq.peak_live_bytes);
  }
  state.SetItemsProcessed(state.iterations());
}

// Workload 3: one allocator shared by the benchmark's threads.
struct SharedRun {
  std::unique_ptr<BenchAllocator> allocator;
  std::vector<OpSequence> sequences;
  std::vector<std::vector<void*>> slots;
  std::vector<std::size_t> position;

  // Frees what the last run's threads left live; they have all finished.
  void Close() {
    for (std::size_t k = 0; k < sequences.size() && allocator; ++k) {
      RunOps(*allocator, sequences[k], position[k], sequences[k].ops.size(), slots[k],
             static_cast<int>(k) * kStreamsPerThread);
    }
    allocator.reset();
    sequences.clear();
    slots.clear();
    position.clear();
  }
  ~SharedRun() { Close(); }
};

void SharedSequences(benchmark::State& state, const AllocatorSpec& spec,
                     const std::shared_ptr<SharedRun>& run) {
  const int t = state.thread_index();
  if (t == 0) {
    run->Close();  // the previous run's threads are all done
    run->allocator = MakeOrSkip(state, spec.make(kStreamsPerThread * state.threads()));
    for (int k = 0; k < state.threads(); ++k) {
      run->sequences.push_back(RandomAllocations(100 + static_cast<std::uint64_t>(k), kRandomOps,
                                                 256, std::size_t{64} << 20, 32,
                                                 kStreamsPerThread));
      run->slots.emplace_back(run->sequences.back().slots, nullptr);
      run->position.push_back(0);
      if (run->allocator) {  // warm-up, single-threaded
        RunOps(*run->allocator, run->sequences[k], 0, run->sequences[k].ops.size(),
               run->slots[k], k * kStreamsPerThread);
      }
    }
  }
  // Thread-local copies in the loop: the shared vectors' elements sit on one
  // cache line, and writing them from both threads would measure false sharing.
  BenchAllocator* allocator = nullptr;
  const OpSequence* seq = nullptr;
  std::vector<void*>* slots = nullptr;
  std::size_t i = 0;
  for (auto _ : state) {  // Google Benchmark holds every thread here until setup is done
    if (allocator == nullptr) {
      if (!run->allocator) {
        // Thread 0 could not make it (no device): every thread must say so
        // before leaving the loop, or Google Benchmark aborts the run.
        if (t != 0) state.SkipWithError("the allocator could not be made");
        break;
      }
      allocator = run->allocator.get();
      seq = &run->sequences[t];
      slots = &run->slots[t];
      i = run->position[t];
    }
    RunOps(*allocator, *seq, i, i + 1, *slots, t * kStreamsPerThread);
    if (++i == seq->ops.size()) i = 0;
  }
  if (allocator != nullptr) run->position[t] = i;
  state.SetItemsProcessed(state.iterations());
}

void Holes(benchmark::State& state, std::unique_ptr<BenchAllocator> a, std::size_t holes) {
  if (a == nullptr) return;
  // Alternate kept and freed 2 KiB blocks: `holes` holes that cannot merge.
  std::vector<void*> keep, hole;
  for (std::size_t i = 0; i < holes; ++i) {
    hole.push_back(a->Allocate(2048, 0));
    keep.push_back(a->Allocate(512, 0));
  }
  for (void* p : hole) {
    if (p) a->Deallocate(p, 2048, 0);
  }
  for (auto _ : state) {
    void* p = a->Allocate(1024, 0);
    benchmark::DoNotOptimize(p);
    if (p == nullptr) {
      state.SkipWithError("allocation failed");
      break;
    }
    a->Deallocate(p, 1024, 0);
  }
  for (void* p : keep) {
    if (p) a->Deallocate(p, 512, 0);
  }
  state.SetItemsProcessed(state.iterations());
}

void Metadata(benchmark::State& state) {
  constexpr std::size_t kBytes = 64 << 10, kCount = 4096;
  double pct = 0;
  for (auto _ : state) {
    StartCountingNew();
    {
      std::unique_ptr<BenchAllocator> a =
          MakeOrSkip(state, AllAllocators().front().make(1));  // caching
      if (a == nullptr) break;
      std::vector<void*> live;
      live.reserve(kCount);
      const std::int64_t before = CountedNewBytes();  // the vector itself
      for (std::size_t i = 0; i < kCount; ++i) live.push_back(a->Allocate(kBytes, 0));
      pct = 100.0 * static_cast<double>(CountedNewBytes() - before) /
            static_cast<double>(kBytes * kCount);
      for (void* p : live) a->Deallocate(p, kBytes, 0);
    }
    StopCountingNew();
  }
  state.counters["metadata_pct"] = pct;
}

const OpSequence& RandomSequence() {
  static const OpSequence seq =
      RandomAllocations(1, kRandomOps, 256, std::size_t{64} << 20, 64, 1);
  return seq;
}
const OpSequence& TraceSequence(harness::TraceKind kind) {
  static const OpSequence training = TraceOps(harness::TraceKind::kTraining, 1, 20000, 2);
  static const OpSequence serving = TraceOps(harness::TraceKind::kServing, 1, 20000, 2);
  return kind == harness::TraceKind::kTraining ? training : serving;
}

void RegisterAll() {
  for (const AllocatorSpec& spec : AllAllocators()) {
    const std::string& name = spec.name;
    const bool latency_model = absl::StrContains(name, "cudalat");
    for (auto [label, bytes] : {std::pair<const char*, std::size_t>{"pair_256B", 256},
                                {"pair_64KiB", 64 << 10},
                                {"pair_4MiB", 4 << 20}}) {
      benchmark::RegisterBenchmark(absl::StrCat(label, "/", name).c_str(),
                                   [&spec, bytes = bytes](benchmark::State& s) {
                                     Pairs(s, MakeOrSkip(s, spec.make(1)), bytes);
                                   });
    }
    benchmark::RegisterBenchmark(absl::StrCat("random/", name).c_str(),
                                 [&spec](benchmark::State& s) {
                                   auto a = MakeOrSkip(s, spec.make(1));
                                   Sequence(s, a.get(), RandomSequence());
                                 });
    if (spec.thread_safe) {
      auto run = std::make_shared<SharedRun>();
      benchmark::RegisterBenchmark(absl::StrCat("random_1t/", name).c_str(),
                                   [&spec, run](benchmark::State& s) {
                                     SharedSequences(s, spec, run);
                                   })
          ->Threads(1)
          ->UseRealTime();
      benchmark::RegisterBenchmark(absl::StrCat("random_2t/", name).c_str(),
                                   [&spec, run](benchmark::State& s) {
                                     SharedSequences(s, spec, run);
                                   })
          ->Threads(2)
          ->UseRealTime();
      // More threads where the host has the cores (a GPU host usually does).
      for (int threads : kMoreThreads) {
        if (threads > static_cast<int>(std::thread::hardware_concurrency())) break;
        benchmark::RegisterBenchmark(absl::StrCat("random_", threads, "t/", name).c_str(),
                                     [&spec, run](benchmark::State& s) {
                                       SharedSequences(s, spec, run);
                                     })
            ->Threads(threads)
            ->UseRealTime();
      }
    }
    if (!latency_model) {  // bookkeeping cost only: the latency model would swamp it
      for (std::size_t holes : {4096, 16384, 65536}) {
        benchmark::RegisterBenchmark(absl::StrCat("holes_", holes, "/", name).c_str(),
                                     [&spec, holes](benchmark::State& s) {
                                       Holes(s, MakeOrSkip(s, spec.make(1)), holes);
                                     });
      }
    }
    for (auto kind : {harness::TraceKind::kTraining, harness::TraceKind::kServing}) {
      const char* label =
          kind == harness::TraceKind::kTraining ? "replay_training" : "replay_serving";
      benchmark::RegisterBenchmark(absl::StrCat(label, "/", name).c_str(),
                                   [&spec, kind](benchmark::State& s) {
                                     auto a = MakeOrSkip(s, spec.make(2));
                                     Sequence(s, a.get(), TraceSequence(kind));
                                   });
    }
  }
  benchmark::RegisterBenchmark("tracking_pair_256B/caching", [](benchmark::State& s) {
    Pairs(s, MakeOrSkip(s, MakeTrackedCaching(1)), 256);
  });
  benchmark::RegisterBenchmark("tracking_random/caching", [](benchmark::State& s) {
    auto a = MakeOrSkip(s, MakeTrackedCaching(1));
    Sequence(s, a.get(), RandomSequence());
  });
  // The pinned host allocator's cache bound against workload 2: device calls
  // saved, peak pinned memory paid.
  for (std::size_t mib : kPinnedBoundsMiB) {
    benchmark::RegisterBenchmark(absl::StrCat("pinned_bound_", mib, "MiB/pinned_host").c_str(),
                                 [mib](benchmark::State& s) {
                                   auto a = MakePinnedWithBound(mib << 20);
                                   Sequence(s, a.get(), RandomSequence());
                                 });
  }
  benchmark::RegisterBenchmark("stats_read/caching", [](benchmark::State& s) {
    auto a = MakeOrSkip(s, AllAllocators().front().make(1));
    if (a == nullptr) return;
    for (auto _ : s) a->PollStats();
    s.SetItemsProcessed(s.iterations());
  });
  benchmark::RegisterBenchmark("metadata_64KiB/caching", Metadata)->Iterations(1);
}

std::string TakeFlag(int* argc, char** argv, const char* name) {
  const std::string prefix = absl::StrCat("--", name, "=");
  for (int i = 1; i < *argc; ++i) {
    if (absl::StartsWith(argv[i], prefix)) {
      std::string value = argv[i] + prefix.size();
      for (int j = i; j + 1 < *argc; ++j) argv[j] = argv[j + 1];
      --*argc;
      return value;
    }
  }
  return "";
}

bool WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  return static_cast<bool>(out);
}

}  // namespace
}  // namespace gpualloc::bench

int main(int argc, char** argv) {
  using namespace gpualloc::bench;
  EnsureStaticTlsForDlopen(argc, argv);
  const std::string markdown = TakeFlag(&argc, argv, "markdown");
  const std::string svg = TakeFlag(&argc, argv, "svg");
  // A shorter default than Google Benchmark's 0.5 s keeps the suite in minutes.
  std::vector<char*> args(argv, argv + argc);
  std::string min_time = "--benchmark_min_time=0.2";
  bool has_min_time = false;
  for (char* a : args) has_min_time |= std::strncmp(a, "--benchmark_min_time", 20) == 0;
  if (!has_min_time) args.push_back(min_time.data());
  int count = static_cast<int>(args.size());
  RegisterAll();
  benchmark::Initialize(&count, args.data());
  if (benchmark::ReportUnrecognizedArguments(count, args.data())) return 2;
  CollectingReporter reporter;  // plain tables: the output usually goes to a file
  benchmark::RunSpecifiedBenchmarks(&reporter);
  std::vector<std::string> allocators;
  for (const AllocatorSpec& spec : AllAllocators()) allocators.push_back(spec.name);
  // The thread counts this host registered, after random_2t.
  std::vector<std::string> workloads = kWorkloads;
  auto after = std::find(workloads.begin(), workloads.end(), "random_2t") + 1;
  for (int threads : kMoreThreads) {
    if (threads > static_cast<int>(std::thread::hardware_concurrency())) break;
    after = workloads.insert(after, absl::StrCat("random_", threads, "t")) + 1;
  }
  const std::string report = MarkdownReport(reporter.results(), workloads, allocators);
  std::printf("\n<!-- report -->\n%s", report.c_str());
  if (!markdown.empty() && !WriteFile(markdown, report)) {
    std::fprintf(stderr, "bench: cannot write %s\n", markdown.c_str());
    return 1;
  }
  if (!svg.empty() && !WriteFile(svg, SvgPlot(reporter.results(), kPlotted, allocators))) {
    std::fprintf(stderr, "bench: cannot write %s\n", svg.c_str());
    return 1;
  }
  // The registered runs hold allocators: free them now, while the runtime is
  // still loaded, not in static destruction after it unloaded.
  benchmark::ClearRegisteredBenchmarks();
  benchmark::Shutdown();
  return 0;
}
