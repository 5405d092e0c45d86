// Seeded generators of realistic allocation traces, so benchmarks and
// comparisons have workloads shaped like real ones without shipping real
// traces. The same (kind, seed, length) always gives the same trace.
//
// Training step (kTraining): long-lived parameters and optimizer state
// allocated once; then per step a forward pass allocating activations of
// growing, layer-dependent sizes (kept until backward), a backward pass
// freeing them in reverse while allocating and freeing gradients, and a few
// temporary workspaces.
//
// Serving (kServing): requests arrive and finish at random; each holds a
// KV-cache block that grows in pages as tokens are generated, plus short-lived
// per-step activations; lifetimes are heavy-tailed.
#ifndef GPUALLOC_HARNESS_TRACE_TRACE_GENERATOR_H_
#define GPUALLOC_HARNESS_TRACE_TRACE_GENERATOR_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/strings/string_view.h"
#include "allocator/observe/trace_format.h"

namespace gpualloc::harness {

enum class TraceKind { kTraining, kServing };
bool ParseTraceKind(absl::string_view name, TraceKind* kind);

// About `events` events (the generator finishes the step or request it is in),
// handed to `sink` one by one as they happen: memory stays bounded by the
// workload's live allocations whatever the length. Stops early, returning
// false, when the sink returns false.
bool GenerateTraceTo(TraceKind kind, std::uint64_t seed, std::size_t events,
                     const std::function<bool(const TraceEvent&)>& sink);
// The same trace, collected in memory (for tests and benchmarks of modest
// length).
std::vector<TraceEvent> GenerateTrace(TraceKind kind, std::uint64_t seed, std::size_t events);

}  // namespace gpualloc::harness

#endif  // GPUALLOC_HARNESS_TRACE_TRACE_GENERATOR_H_
