// The workloads of the benchmark suite as closed operation sequences: each
// starts and ends with nothing live, so a benchmark can cycle through one for
// as many iterations as it needs, and every allocator sees the same requests.
#ifndef GPUALLOC_HARNESS_BENCH_BENCH_WORKLOADS_H_
#define GPUALLOC_HARNESS_BENCH_BENCH_WORKLOADS_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "harness/bench/bench_allocator.h"
#include "harness/trace/trace_generator.h"

namespace gpualloc::bench {

struct Op {
  enum Kind : std::uint8_t { kAllocate, kFree };
  Kind kind;
  std::uint8_t stream;   // 0 .. streams-1
  std::uint32_t slot;    // where the allocation lives between its two ops
  std::uint64_t bytes;
};

struct OpSequence {
  std::vector<Op> ops;
  std::size_t slots = 0;              // most allocations live at once
  std::int64_t peak_live_bytes = 0;   // most bytes live at once
};

// RMM's random_allocations, closed: `count` operations, each an allocation
// (sizes log-uniform in [min_bytes, max_bytes], on a random stream) or a free
// of a random live allocation, at most `max_live` live; then frees of what is
// left.
OpSequence RandomAllocations(std::uint64_t seed, std::size_t count, std::size_t min_bytes,
                             std::size_t max_bytes, int max_live, int streams);

// A generated trace (harness/trace/trace_generator.h) as an operation
// sequence; the trace's streams are mapped onto `streams` streams.
OpSequence TraceOps(harness::TraceKind kind, std::uint64_t seed, std::size_t events,
                    int streams);

// Runs ops [begin, end) against `a`, `stream_offset` added to every stream.
// Failed allocations leave their slot null and their free is skipped.
inline void RunOps(BenchAllocator& a, const OpSequence& seq, std::size_t begin, std::size_t end,
                   std::vector<void*>& slots, int stream_offset = 0) {
  for (std::size_t i = begin; i < end; ++i) {
    const Op& op = seq.ops[i];
    if (op.kind == Op::kAllocate) {
      slots[op.slot] = a.Allocate(op.bytes, op.stream + stream_offset);
    } else if (void* p = slots[op.slot]) {
      a.Deallocate(p, op.bytes, op.stream + stream_offset);
      slots[op.slot] = nullptr;
    }
  }
}

}  // namespace gpualloc::bench

#endif  // GPUALLOC_HARNESS_BENCH_BENCH_WORKLOADS_H_
