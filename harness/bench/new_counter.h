// Counts the host bytes live through operator new while enabled, so the suite
// can measure an allocator's own bookkeeping (metadata) against the memory it
// manages. The counting operator new/delete replace the global ones in the
// benchmark binary only; disabled, they cost one relaxed load.
#ifndef GPUALLOC_HARNESS_BENCH_NEW_COUNTER_H_
#define GPUALLOC_HARNESS_BENCH_NEW_COUNTER_H_

#include <cstdint>

namespace gpualloc::bench {

// Starts counting from zero.
void StartCountingNew();
// Bytes allocated through operator new since the start and not yet deleted
// (allocator-usable sizes, so malloc's rounding counts as the real cost).
std::int64_t CountedNewBytes();
void StopCountingNew();

}  // namespace gpualloc::bench

#endif  // GPUALLOC_HARNESS_BENCH_NEW_COUNTER_H_
