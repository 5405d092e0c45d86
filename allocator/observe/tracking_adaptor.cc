#include "allocator/observe/tracking_adaptor.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>

#include "absl/container/flat_hash_set.h"
#include "absl/debugging/stacktrace.h"
#include "absl/debugging/symbolize.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "allocator/common/pmr_object.h"
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

namespace {

AllocationRecorder* RecorderToUse(MemoryResource& upstream, const TrackingOptions& options) {
  if (options.capture_stacks || options.own_table) return nullptr;
  AllocationRecorder* recorder = upstream.recorder();
  if (recorder != nullptr) recorder->StartRecording();
  return recorder;
}

}  // namespace

TrackingAdaptor::TrackingAdaptor(std::shared_ptr<MemoryResource> upstream, TrackingOptions options)
    : upstream_(std::move(upstream)),
      device_(upstream_->device()),
      options_(options),
      recorder_(RecorderToUse(*upstream_, options)),
      live_(MetadataResourceOr(options.metadata_resource)),
      stacks_(MetadataResourceOr(options.metadata_resource)),
      tags_(MetadataResourceOr(options.metadata_resource)) {}

absl::StatusOr<Allocation> TrackingAdaptor::DoAllocate(std::size_t bytes, Stream stream) {
  // It records. This call's checks and boundary cover the upstream's.
  if (recorder_ != nullptr) return AllocateFromUpstream(*upstream_, bytes, stream);
  std::vector<void*> stack;
  if (options_.capture_stacks) {
    // How many frames the allocator's own layers take depends on inlining
    // (optimisation level, sanitizers), so none is skipped here: the report
    // drops the library's leading frames by name.
    stack.resize(options_.max_frames + kLibraryFramesBudget);
    const int n = absl::GetStackTrace(stack.data(), static_cast<int>(stack.size()),
                                      /*skip_count=*/0);
    stack.resize(std::max(n, 0));
  }
  const absl::string_view tag = CurrentAllocationTag();
  absl::StatusOr<Allocation> a = upstream_->Allocate(bytes, stream);
  if (!a.ok()) return a;
  MutexLock lock(mu_);
  try {
    const Entry entry{*a, next_sequence_, tags_.Intern(tag)};
    if (options_.capture_stacks) stacks_.emplace(a->ptr, std::move(stack));
    live_.emplace(a->ptr, entry);
  } catch (...) {
    stacks_.erase(a->ptr);
    upstream_->Deallocate(*a).IgnoreError();  // untracked memory must not escape
    throw;
  }
  ++next_sequence_;
  return a;
}

absl::Status TrackingAdaptor::DoDeallocate(const Allocation& allocation, Stream stream) {
  if (recorder_ != nullptr) return DeallocateToUpstream(*upstream_, allocation, stream);
  // The entries leave the tables as nodes, kept until the upstream free is
  // known to have worked: a failed free puts them back without allocating.
  decltype(live_)::node_type entry;
  decltype(stacks_)::node_type stack;
  {
    MutexLock lock(mu_);
    auto it = live_.find(allocation.ptr);
    if (it == live_.end()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "tracking adaptor: %p is not a live allocation it saw (foreign or double free)",
          allocation.ptr));
    }
    entry = live_.extract(it);
    if (options_.capture_stacks) stack = stacks_.extract(allocation.ptr);
  }
  absl::Status st = upstream_->Deallocate(allocation, stream);
  if (!st.ok()) {
    MutexLock lock(mu_);
    live_.insert(std::move(entry));  // still live
    if (!stack.empty()) stacks_.insert(std::move(stack));
  }
  return st;
}

std::vector<TrackedAllocation> TrackingAdaptor::Live() const {
  std::vector<TrackedAllocation> out;
  if (recorder_ != nullptr) {
    for (RecordedAllocation& r : recorder_->RecordedLive()) {
      TrackedAllocation t;
      static_cast<RecordedAllocation&>(t) = std::move(r);
      out.push_back(std::move(t));
    }
    return out;  // oldest first already
  }
  {
    MutexLock lock(mu_);
    out.reserve(live_.size());
    for (const auto& [ptr, entry] : live_) {
      TrackedAllocation t;
      t.allocation = entry.allocation;
      t.tag = TagInterner::Text(entry.tag);
      t.sequence = entry.sequence;
      if (auto s = stacks_.find(ptr); s != stacks_.end()) t.stack = s->second;
      out.push_back(std::move(t));
    }
  }
  std::sort(out.begin(), out.end(),
            [](const TrackedAllocation& a, const TrackedAllocation& b) { return a.sequence < b.sequence; });
  return out;
}

std::size_t TrackingAdaptor::live_count() const {
  if (recorder_ != nullptr) return recorder_->recorded_live_count();
  MutexLock lock(mu_);
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

namespace {

// Registrations not yet reported. Never destroyed: the exit handler may run
// after static destructors would have.
struct LeakRegistry {
  std::mutex mu;
  absl::flat_hash_set<const LeakReportAtExit*> pending;
  bool exit_handler_installed = false;
};
LeakRegistry& Registry() {
  static LeakRegistry* registry = new LeakRegistry;
  return *registry;
}

void ReportLeaks(const std::weak_ptr<TrackingAdaptor>& weak) {
  if (std::shared_ptr<TrackingAdaptor> t = weak.lock(); t != nullptr && t->live_count() > 0) {
    std::fprintf(stderr, "gpualloc leak report:\n%s", t->Report().c_str());
  }
}

}  // namespace

LeakReportAtExit::LeakReportAtExit(std::shared_ptr<TrackingAdaptor> tracker) : tracker_(tracker) {
  LeakRegistry& r = Registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.pending.insert(this);
  if (!r.exit_handler_installed) {
    r.exit_handler_installed = true;
    std::atexit([] {
      // Only what is still registered: a registration reports itself once.
      // (Its owner, e.g. the default context, is never destroyed.)
      LeakRegistry& reg = Registry();
      std::lock_guard<std::mutex> guard(reg.mu);
      for (const LeakReportAtExit* p : reg.pending) ReportLeaks(p->tracker_);
      reg.pending.clear();
    });
  }
}

LeakReportAtExit::~LeakReportAtExit() {
  LeakRegistry& r = Registry();
  std::lock_guard<std::mutex> lock(r.mu);
  if (r.pending.erase(this) > 0) ReportLeaks(tracker_);
}

}  // namespace gpualloc
