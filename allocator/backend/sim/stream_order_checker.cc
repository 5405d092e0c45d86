#include "allocator/backend/sim/stream_order_checker.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace gpualloc {
namespace {

const char* ModeName(AccessMode mode) { return mode == AccessMode::kWrite ? "write" : "read"; }

std::string DescribeAccess(const AccessRecord& a, const std::string& actor) {
  return absl::StrFormat("%s by %s (op %d: %s)", ModeName(a.mode), actor, a.op, a.what);
}

}  // namespace

std::string StreamOrderViolation::ToString() const {
  const std::string range =
      absl::StrFormat("[%#x, %#x) (%d bytes) of %s allocation %#x (%d bytes)", begin, end,
                      end - begin, allocation.kind, allocation.base, allocation.bytes);
  switch (kind) {
    case Kind::kUnorderedAccess:
      return absl::StrFormat(
          "stream-order violation: %s is not ordered after %s on %s: no event, stream wait or "
          "host synchronisation orders them",
          DescribeAccess(later, later_actor), DescribeAccess(earlier, earlier_actor), range);
    case Kind::kUnorderedRelease:
      return absl::StrFormat(
          "stream-order violation: %s by %s (op %d) releases %s while %s may still be running "
          "(not ordered before the release)",
          later.what, later_actor, later.op, range, DescribeAccess(earlier, earlier_actor));
    case Kind::kUnmappedAccess:
      return absl::StrFormat(
          "stream-order violation: %s ran on %s after that memory was freed or unmapped",
          DescribeAccess(later, later_actor), range);
    case Kind::kDestroyedStream:  // begin: the stream's handle; end: its device
      return absl::StrFormat(
          "stream-order violation: a call named stream %d of device %d after it was destroyed; "
          "the sim returns an error, a real runtime may crash on the stale handle",
          begin, end);
  }
  return "stream-order violation";
}

StreamOrderChecker::StreamOrderChecker(Options options) : options_(options) {
  clocks_.push_back(VectorClock(1, 0));  // the host
  actor_streams_.push_back(Stream{});
}

void StreamOrderChecker::Join(VectorClock& into, const VectorClock& from) {
  if (into.size() < from.size()) into.resize(from.size(), 0);
  for (std::size_t i = 0; i < from.size(); ++i) into[i] = std::max(into[i], from[i]);
}

VectorClock& StreamOrderChecker::ClockOf(int actor) { return clocks_[actor]; }

std::uint64_t StreamOrderChecker::TickLocked(int actor) {
  VectorClock& clock = ClockOf(actor);
  if (clock.size() <= static_cast<std::size_t>(actor)) clock.resize(actor + 1, 0);
  return ++clock[actor];
}

int StreamOrderChecker::ActorFor(Stream stream) {
  std::lock_guard<std::mutex> lock(mu_);
  auto [it, inserted] = actors_.try_emplace(stream, static_cast<int>(clocks_.size()));
  if (inserted) {
    clocks_.push_back(VectorClock(clocks_.size() + 1, 0));
    actor_streams_.push_back(stream);
  }
  return it->second;
}

std::string StreamOrderChecker::ActorNameLocked(int actor) const {
  if (actor == kHost) return "the host";
  const Stream s = actor_streams_[actor];
  if (s.is_default()) return absl::StrFormat("the default stream of device %d", s.device);
  return absl::StrFormat("stream %d of device %d", s.handle, s.device);
}

void StreamOrderChecker::SplitAt(std::uintptr_t at) {
  auto it = shadow_.upper_bound(at);
  if (it == shadow_.begin()) return;
  --it;
  if (it->first == at || it->second.end <= at) return;
  Shadow tail = it->second;  // copies the records: both halves keep them
  it->second.end = at;
  shadow_.emplace_hint(std::next(it), at, std::move(tail));
}

void StreamOrderChecker::AddViolationLocked(StreamOrderViolation v) {
  ++stats_.violations;
  v.earlier_actor = ActorNameLocked(v.earlier.actor);
  v.later_actor = ActorNameLocked(v.later.actor);
  if (options_.abort_on_violation) {
    std::fprintf(stderr, "%s\nStreamOrderChecker: aborting at the first violation.\n",
                 v.ToString().c_str());
    std::abort();
  }
  if (kept_.size() < options_.max_kept) kept_.push_back(std::move(v));
}

void StreamOrderChecker::CheckAndRecordLocked(const AccessRecord& access, const VectorClock& clock,
                                              const RangeAccess& range) {
  ++stats_.accesses_checked;
  const std::uintptr_t begin = range.begin;
  const std::uintptr_t end = range.begin + range.bytes;
  if (range.bytes == 0) return;
  SplitAt(begin);
  SplitAt(end);
  std::uint64_t last_reported = 0;  // one report per earlier operation
  auto report = [&](const AccessRecord& earlier, std::uintptr_t b, std::uintptr_t e) {
    if (earlier.op == last_reported) return;
    last_reported = earlier.op;
    StreamOrderViolation v;
    v.kind = StreamOrderViolation::Kind::kUnorderedAccess;
    v.begin = b;
    v.end = e;
    v.allocation = range.allocation;
    v.earlier = earlier;
    v.later = access;
    AddViolationLocked(std::move(v));
  };
  // Check every recorded piece of the range.
  for (auto it = shadow_.lower_bound(begin); it != shadow_.end() && it->first < end; ++it) {
    const Shadow& s = it->second;
    if (s.written && s.write.actor != access.actor && !Ordered(s.write, clock)) {
      report(s.write, it->first, s.end);
    }
    if (access.mode == AccessMode::kWrite) {
      for (const AccessRecord& r : s.reads) {
        if (r.actor != access.actor && !Ordered(r, clock)) report(r, it->first, s.end);
      }
    }
  }
  if (access.mode == AccessMode::kWrite) {
    // A write supersedes everything in the range: one entry again.
    shadow_.erase(shadow_.lower_bound(begin), shadow_.lower_bound(end));
    Shadow fresh;
    fresh.end = end;
    fresh.written = true;
    fresh.write = access;
    fresh.allocation = range.allocation;
    shadow_.emplace(begin, std::move(fresh));
    return;
  }
  // A read joins each piece's readers, and fills the gaps with new pieces.
  std::uintptr_t cursor = begin;
  auto it = shadow_.lower_bound(begin);
  while (cursor < end) {
    if (it != shadow_.end() && it->first == cursor) {
      Shadow& s = it->second;
      auto same = std::find_if(s.reads.begin(), s.reads.end(),
                               [&](const AccessRecord& r) { return r.actor == access.actor; });
      if (same != s.reads.end()) {
        *same = access;
      } else {
        s.reads.push_back(access);
      }
      cursor = s.end;
      ++it;
      continue;
    }
    const std::uintptr_t gap_end = it == shadow_.end() ? end : std::min(end, it->first);
    Shadow fresh;
    fresh.end = gap_end;
    fresh.reads.push_back(access);
    fresh.allocation = range.allocation;
    it = std::next(shadow_.emplace_hint(it, cursor, std::move(fresh)));
    cursor = gap_end;
  }
}

std::uint64_t StreamOrderChecker::Enqueue(int actor, absl::Span<const RangeAccess> accesses,
                                          const char* what) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::uint64_t op = next_op_++;
  ++stats_.operations;
  // Work enqueued now follows what the host knows (the host knows itself).
  if (actor != kHost) Join(ClockOf(actor), ClockOf(kHost));
  const std::uint64_t epoch = TickLocked(actor);
  const VectorClock& clock = ClockOf(actor);  // unchanged while the accesses are checked
  for (const RangeAccess& range : accesses) {
    CheckAndRecordLocked(AccessRecord{actor, epoch, op, what, range.mode}, clock, range);
  }
  return op;
}

std::uint64_t StreamOrderChecker::HostAccess(absl::Span<const RangeAccess> accesses,
                                             const char* what) {
  return Enqueue(kHost, accesses, what);
}

void StreamOrderChecker::Release(int actor, std::uintptr_t begin, std::size_t bytes,
                                 const AllocationRef& allocation, const char* what) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::uint64_t op = next_op_++;
  ++stats_.operations;
  ++stats_.accesses_checked;
  if (actor != kHost) Join(ClockOf(actor), ClockOf(kHost));
  const std::uint64_t epoch = TickLocked(actor);
  const VectorClock& clock = ClockOf(actor);  // unchanged while the accesses are checked
  const AccessRecord release{actor, epoch, op, what, AccessMode::kWrite};
  const std::uintptr_t end = begin + bytes;
  SplitAt(begin);
  SplitAt(end);
  auto first = shadow_.lower_bound(begin);
  auto last = shadow_.lower_bound(end);
  std::uint64_t last_reported = 0;
  for (auto it = first; it != last; ++it) {
    const Shadow& s = it->second;
    auto check = [&](const AccessRecord& a) {
      if (a.actor == actor || Ordered(a, clock) || a.op == last_reported) return;
      last_reported = a.op;
      StreamOrderViolation v;
      v.kind = StreamOrderViolation::Kind::kUnorderedRelease;
      v.begin = it->first;
      v.end = s.end;
      v.allocation = allocation;
      v.earlier = a;
      v.later = release;
      AddViolationLocked(std::move(v));
    };
    if (s.written) check(s.write);
    for (const AccessRecord& r : s.reads) check(r);
  }
  shadow_.erase(first, last);
}

void StreamOrderChecker::Forget(std::uintptr_t begin, std::size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  SplitAt(begin);
  SplitAt(begin + bytes);
  shadow_.erase(shadow_.lower_bound(begin), shadow_.lower_bound(begin + bytes));
}

void StreamOrderChecker::ReportUnmapped(int actor, std::uint64_t op, const RangeAccess& access,
                                        const char* what) {
  std::lock_guard<std::mutex> lock(mu_);
  StreamOrderViolation v;
  v.kind = StreamOrderViolation::Kind::kUnmappedAccess;
  v.begin = access.begin;
  v.end = access.begin + access.bytes;
  v.allocation = access.allocation;
  v.later = AccessRecord{actor, 0, op, what, access.mode};
  v.earlier = v.later;
  AddViolationLocked(std::move(v));
}

void StreamOrderChecker::ReportDestroyedStream(Stream stream) {
  std::lock_guard<std::mutex> lock(mu_);
  StreamOrderViolation v;
  v.kind = StreamOrderViolation::Kind::kDestroyedStream;
  v.begin = stream.handle;
  v.end = static_cast<std::uintptr_t>(stream.device);
  AddViolationLocked(std::move(v));
}

VectorClock StreamOrderChecker::Capture(int actor) {
  std::lock_guard<std::mutex> lock(mu_);
  Join(ClockOf(actor), ClockOf(kHost));
  return ClockOf(actor);
}

void StreamOrderChecker::Wait(int actor, const VectorClock& clock) {
  std::lock_guard<std::mutex> lock(mu_);
  Join(ClockOf(actor), clock);
}

void StreamOrderChecker::HostJoin(const VectorClock& clock) {
  std::lock_guard<std::mutex> lock(mu_);
  Join(ClockOf(kHost), clock);
}

void StreamOrderChecker::HostJoinActors(absl::Span<const int> actors) {
  std::lock_guard<std::mutex> lock(mu_);
  for (int actor : actors) Join(clocks_[kHost], clocks_[actor]);
}

StreamOrderStats StreamOrderChecker::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

std::vector<StreamOrderViolation> StreamOrderChecker::Violations() const {
  std::lock_guard<std::mutex> lock(mu_);
  return kept_;
}

std::string StreamOrderChecker::Report() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  for (const StreamOrderViolation& v : kept_) absl::StrAppend(&out, v.ToString(), "\n");
  if (stats_.violations > kept_.size()) {
    absl::StrAppendFormat(&out, "... and %d more\n", stats_.violations - kept_.size());
  }
  return out;
}

}  // namespace gpualloc
