#include "harness/bench/bench_workloads.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/container/flat_hash_map.h"

namespace gpualloc::bench {
namespace {

// Hands out slot numbers, reusing freed ones, so `slots` is the live peak.
class SlotPool {
 public:
  std::uint32_t Take() {
    if (free_.empty()) return next_++;
    const std::uint32_t s = free_.back();
    free_.pop_back();
    return s;
  }
  void Give(std::uint32_t s) { free_.push_back(s); }
  std::size_t count() const { return next_; }

 private:
  std::vector<std::uint32_t> free_;
  std::uint32_t next_ = 0;
};

struct Live {
  std::uint32_t slot;
  std::uint8_t stream;
  std::uint64_t bytes;
};

}  // namespace

OpSequence RandomAllocations(std::uint64_t seed, std::size_t count, std::size_t min_bytes,
                             std::size_t max_bytes, int max_live, int streams) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> log_size(std::log2(static_cast<double>(min_bytes)),
                                                  std::log2(static_cast<double>(max_bytes)));
  OpSequence seq;
  SlotPool slots;
  std::vector<Live> live;
  std::int64_t live_bytes = 0;
  auto free_at = [&](std::size_t i) {
    const Live l = live[i];
    seq.ops.push_back(Op{Op::kFree, l.stream, l.slot, l.bytes});
    slots.Give(l.slot);
    live_bytes -= static_cast<std::int64_t>(l.bytes);
    live[i] = live.back();
    live.pop_back();
  };
  for (std::size_t n = 0; n < count; ++n) {
    const bool allocate = live.empty() ||
                          (static_cast<int>(live.size()) < max_live && rng() % 2 == 0);
    if (allocate) {
      const auto bytes = static_cast<std::uint64_t>(std::exp2(log_size(rng)));
      const auto stream = static_cast<std::uint8_t>(rng() % static_cast<std::uint64_t>(streams));
      const std::uint32_t slot = slots.Take();
      seq.ops.push_back(Op{Op::kAllocate, stream, slot, bytes});
      live.push_back(Live{slot, stream, bytes});
      live_bytes += static_cast<std::int64_t>(bytes);
      seq.peak_live_bytes = std::max(seq.peak_live_bytes, live_bytes);
    } else {
      free_at(rng() % live.size());
    }
  }
  while (!live.empty()) free_at(live.size() - 1);
  seq.slots = slots.count();
  return seq;
}

OpSequence TraceOps(harness::TraceKind kind, std::uint64_t seed, std::size_t events,
                    int streams) {
  OpSequence seq;
  SlotPool slots;
  absl::flat_hash_map<std::uint64_t, Live> live;  // trace id -> slot
  absl::flat_hash_map<std::uint64_t, std::uint8_t> stream_index;
  std::int64_t live_bytes = 0;
  for (const TraceEvent& e : harness::GenerateTrace(kind, seed, events)) {
    if (e.action == TraceEvent::Action::kAllocate) {
      auto [it, added] = stream_index.try_emplace(
          e.stream, static_cast<std::uint8_t>(stream_index.size() % streams));
      const Live l{slots.Take(), it->second, e.size};
      live[e.id] = l;
      seq.ops.push_back(Op{Op::kAllocate, l.stream, l.slot, l.bytes});
      live_bytes += static_cast<std::int64_t>(l.bytes);
      seq.peak_live_bytes = std::max(seq.peak_live_bytes, live_bytes);
    } else if (auto it = live.find(e.id); it != live.end()) {
      const Live l = it->second;
      seq.ops.push_back(Op{Op::kFree, l.stream, l.slot, l.bytes});
      slots.Give(l.slot);
      live_bytes -= static_cast<std::int64_t>(l.bytes);
      live.erase(it);
    }
  }
  // Close the sequence in a fixed order (by slot).
  std::vector<Live> left;
  for (const auto& [id, l] : live) left.push_back(l);
  std::sort(left.begin(), left.end(), [](const Live& a, const Live& b) { return a.slot < b.slot; });
  for (const Live& l : left) seq.ops.push_back(Op{Op::kFree, l.stream, l.slot, l.bytes});
  seq.slots = slots.count();
  return seq;
}

}  // namespace gpualloc::bench
