// One operation grammar for every randomized suite: RapidCheck generates and
// shrinks sequences of Op, libFuzzer decodes them from bytes, and one
// interpreter runs them against the real caching allocator on the sim while a
// reference model checks the result after every step.
#ifndef GPUALLOC_HARNESS_OPS_OPS_H_
#define GPUALLOC_HARNESS_OPS_OPS_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace gpualloc::harness {

enum class OpKind : std::uint8_t {
  kAllocate,           // a: size, b: stream index
  kFree,               // a: live index
  kFreeOnOtherStream,  // a: live index, b: stream index
  kRecordUse,          // a: live index, b: stream index
  kSyncStream,         // b: stream index
  kEmptyCache,         // a: bytes to keep
  kSetLimit,           // a: limit in bytes (0: the device's capacity)
  kInjectFault,        // a: which fault, armed for the next matching backend call
  kBadFree,            // a: which bad free (foreign, double, wrong size)
  kPinnedAllocate,     // a: size, b: owner device
  kPinnedFree,         // a: live pinned index (freed from this thread's current device)
  kSwitchDevice,       // b: the device this thread makes current
  kCopy,               // a: source live index, b: destination live index (Transfers)
  kSharedView,         // a: size, b: view selector (SharedMemory and checked views)
  // Stream work (the sim's stream-order checker judges every reuse):
  kEnqueueWork,        // a: live index (bit 12: order back instead of RecordStream),
                       // b: stream index (bit 4: a write; else a read); on another
                       // stream it first waits for the allocation's stream
  kWaitEvent,          // a: stream index that records, b: stream index that waits
  kFreeInFlight,       // a: live index, b: stream index: free with a kernel still queued
  kHostSync,           // the host waits for the whole device
  kPinnedCopy,         // a: live pinned index, b: live index (bit 12: device to host):
                       // an async copy between them, the pinned block recorded on it
  // The pools (allocator/pools):
  kStagingReadback,    // a: live index (bit 12: return the staging buffer with the copy
                       // in flight, unchecked), b: how much to read (x 4 KiB, at least the
                       // cookie): a readback through the staging pool, the cookie checked
  kKeyedReduce,        // a: element count - 1 (mod 64; bit 6: the purpose; bit 12: return
                       // with the kernel in flight), b: stream index: a keyed buffer
                       // zeroed, written by a kernel and a copy, its result slot checked
  kBridgeEcho,         // a: messages (mod 8, + 1), b: which bridge (one per transfer
                       // strategy): pushed, flushed, read by a kernel, echoed to the
                       // to-host ring by a device copy, drained and checked in order
  kPeerCopy,           // a: live index, b: bit 0: peer access enabled and a kernel of
                       // device 1 reads the allocation too: its cookie copied to device 1
                       // on device 1's stream (the allocator told by RecordStream), checked
  kCount,
};

struct Op {
  OpKind kind = OpKind::kAllocate;
  std::uint64_t a = 0;
  std::uint64_t b = 0;
  std::string ToString() const;
};

std::string OpsToString(const std::vector<Op>& ops);

// Reads ops from fuzz bytes: each op takes up to 9 bytes (kind, then a and b
// in a compact varint-like form); a short tail is ignored. Never fails.
std::vector<Op> DecodeOps(const std::uint8_t* data, std::size_t size, std::size_t max_ops = 256);

}  // namespace gpualloc::harness

#endif  // GPUALLOC_HARNESS_OPS_OPS_H_
