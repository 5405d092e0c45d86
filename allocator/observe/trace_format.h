// Allocation traces: what the trace recorder writes and the replayer reads.
//
// Our binary format ("GPUTRACE", version 1), little-endian:
//   header  8 bytes "GPUTRACE", u32 version = 1, u32 record size = 48
//   record  u64 time_ns     since recording started
//           u32 thread      small id, in order of first appearance
//           u8  action      1 = allocate, 2 = free
//           u8[3]           zero
//           i32 device
//           u32             zero
//           u64 stream      the stream handle
//           u64 size        bytes requested
//           u64 id          the allocation's id (allocations are numbered;
//                           pointers are not kept, so traces replay anywhere)
//
// RAPIDS RMM's logging_resource_adaptor CSV is read too (header
// "Thread,Time,Action,Pointer,Size,Stream"; Time as HH:MM:SS:microseconds;
// Action allocate, free or "allocate failure"), so traces recorded in the
// field can be replayed.
//
// A corrupt or truncated file is an InvalidArgument naming the offending
// record's byte offset (binary) or line (CSV) and what was wrong.
#ifndef GPUALLOC_ALLOCATOR_OBSERVE_TRACE_FORMAT_H_
#define GPUALLOC_ALLOCATOR_OBSERVE_TRACE_FORMAT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace gpualloc {

struct TraceEvent {
  enum class Action : std::uint8_t { kAllocate = 1, kFree = 2 };
  std::uint64_t time_ns = 0;
  std::uint32_t thread = 0;
  Action action = Action::kAllocate;
  std::int32_t device = 0;
  std::uint64_t stream = 0;
  std::uint64_t size = 0;
  std::uint64_t id = 0;
  friend bool operator==(const TraceEvent&, const TraceEvent&) = default;
};

inline constexpr std::size_t kTraceHeaderBytes = 16;
inline constexpr std::size_t kTraceRecordBytes = 48;

std::string EncodeTraceHeader();
void AppendTraceRecord(const TraceEvent& event, std::string* out);

// Our binary format.
absl::StatusOr<std::vector<TraceEvent>> DecodeTrace(absl::string_view bytes);
// RMM's CSV. Frees are matched to allocations by pointer.
absl::StatusOr<std::vector<TraceEvent>> ParseRmmCsv(absl::string_view text);
// Either, told apart by the magic.
absl::StatusOr<std::vector<TraceEvent>> ParseTrace(absl::string_view contents);
// Every free names a live allocation, no id is allocated twice while live.
absl::Status ValidateTrace(const std::vector<TraceEvent>& events);

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_OBSERVE_TRACE_FORMAT_H_
