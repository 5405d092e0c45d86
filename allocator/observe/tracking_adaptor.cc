#include "allocator/observe/tracking_adaptor.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>

#include "absl/debugging/stacktrace.h"
#include "absl/debugging/symbolize.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "allocator/policy/allocation_tag.h"

namespace gpualloc {
namespace {

// Frames the allocator's own layers may add above the caller.
constexpr int kLibraryFramesBudget = 8;

std::string Frame(void* pc) {
  char name[512];
  if (absl::Symbolize(pc, name, sizeof name)) return name;
  return absl::StrFormat("%p", pc);
}

// The allocation's frames from the first one outside this library: the
// tracking adaptor, the resource boundary and the stack walker itself.
std::vector<std::string> CallerFrames(const std::vector<void*>& stack, int max_frames) {
  std::vector<std::string> out;
  bool in_library = true;
  for (void* pc : stack) {
    std::string name = Frame(pc);
    if (in_library && (absl::StrContains(name, "gpualloc::TrackingAdaptor::") ||
                       absl::StrContains(name, "gpualloc::MemoryResource::") ||
                       absl::StrContains(name, "gpualloc::CallAtBoundary") ||
                       absl::StrContains(name, "absl::") || absl::StrContains(name, "GetStackTrace"))) {
      continue;
    }
    in_library = false;
    out.push_back(std::move(name));
    if (static_cast<int>(out.size()) == max_frames) break;
  }
  return out;
}

std::string Bytes(std::size_t b) {
  if (b >= (1u << 20)) return absl::StrFormat("%.1f MiB", b / 1048576.0);
  if (b >= 1024) return absl::StrFormat("%.1f KiB", b / 1024.0);
  return absl::StrFormat("%d B", b);
}

}  // namespace

TrackingAdaptor::TrackingAdaptor(std::shared_ptr<MemoryResource> upstream, TrackingOptions options)
    : upstream_(std::move(upstream)), options_(options) {}

absl::StatusOr<Allocation> TrackingAdaptor::DoAllocate(std::size_t bytes, Stream stream) {
  TrackedAllocation record;
  record.tag = std::string(CurrentAllocationTag());
  if (options_.capture_stacks) {
    // How many frames the allocator's own layers take depends on inlining
    // (optimisation level, sanitizers), so none is skipped here: the report
    // drops the library's leading frames by name.
    record.stack.resize(options_.max_frames + kLibraryFramesBudget);
    const int n = absl::GetStackTrace(record.stack.data(), static_cast<int>(record.stack.size()),
                                      /*skip_count=*/0);
    record.stack.resize(std::max(n, 0));
  }
  absl::StatusOr<Allocation> a = upstream_->Allocate(bytes, stream);
  if (!a.ok()) return a;
  record.allocation = *a;
  std::lock_guard<Mutex> lock(mu_);
  record.sequence = next_sequence_++;
  try {
    live_.emplace(a->ptr, std::move(record));
  } catch (...) {
    upstream_->Deallocate(*a).IgnoreError();  // untracked memory must not escape
    throw;
  }
  return a;
}

absl::Status TrackingAdaptor::DoDeallocate(const Allocation& allocation, Stream stream) {
  Table::node_type entry;
  {
    std::lock_guard<Mutex> lock(mu_);
    auto it = live_.find(allocation.ptr);
    if (it == live_.end()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "tracking adaptor: %p is not a live allocation it saw (foreign or double free)",
          allocation.ptr));
    }
    entry = live_.extract(it);
  }
  absl::Status st = upstream_->Deallocate(allocation, stream);
  if (!st.ok()) {
    std::lock_guard<Mutex> lock(mu_);
    live_.insert(std::move(entry));  // still live
  }
  return st;
}

std::vector<TrackedAllocation> TrackingAdaptor::Live() const {
  std::vector<TrackedAllocation> out;
  {
    std::lock_guard<Mutex> lock(mu_);
    out.reserve(live_.size());
    for (const auto& [ptr, record] : live_) out.push_back(record);
  }
  std::sort(out.begin(), out.end(),
            [](const TrackedAllocation& a, const TrackedAllocation& b) { return a.sequence < b.sequence; });
  return out;
}

std::size_t TrackingAdaptor::live_count() const {
  std::lock_guard<Mutex> lock(mu_);
  return live_.size();
}

std::string TrackingAdaptor::Report() const {
  const std::vector<TrackedAllocation> live = Live();
  if (live.empty()) return "No leaks.\n";
  struct Group {
    std::size_t count = 0;
    std::size_t bytes = 0;
    const TrackedAllocation* example = nullptr;
  };
  // Group by tag and call site (the captured frames).
  std::map<std::pair<std::string, std::vector<void*>>, Group> groups;
  std::size_t total = 0;
  for (const TrackedAllocation& t : live) {
    Group& g = groups[{t.tag, t.stack}];
    ++g.count;
    g.bytes += t.allocation.bytes;
    if (g.example == nullptr) g.example = &t;
    total += t.allocation.bytes;
  }
  std::vector<const std::pair<const std::pair<std::string, std::vector<void*>>, Group>*> order;
  for (const auto& entry : groups) order.push_back(&entry);
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->second.bytes > b->second.bytes; });
  std::string out = absl::StrFormat("%d leaked allocations (%s) in %d groups:\n", live.size(),
                                    Bytes(total), groups.size());
  for (const auto* entry : order) {
    const Group& g = entry->second;
    const TrackedAllocation& e = *g.example;
    absl::StrAppendFormat(&out, "  tag \"%s\": %d allocations, %s, device %d, stream %d\n",
                          entry->first.first, g.count, Bytes(g.bytes), e.allocation.device(),
                          e.allocation.stream.handle);
    for (const std::string& frame : CallerFrames(entry->first.second, options_.max_frames)) {
      absl::StrAppend(&out, "      at ", frame, "\n");
    }
  }
  return out;
}

void PrintLeakReportAtExit(std::shared_ptr<TrackingAdaptor> tracker) {
  // Held until exit on purpose: the report needs the tracker then.
  static std::mutex mu;
  static std::vector<std::shared_ptr<TrackingAdaptor>>* trackers = nullptr;
  std::lock_guard<std::mutex> lock(mu);
  if (trackers == nullptr) {
    trackers = new std::vector<std::shared_ptr<TrackingAdaptor>>();
    std::atexit([] {
      for (const auto& t : *trackers) {
        if (t->live_count() > 0) std::fprintf(stderr, "gpualloc leak report:\n%s", t->Report().c_str());
      }
    });
  }
  trackers->push_back(std::move(tracker));
}

}  // namespace gpualloc
