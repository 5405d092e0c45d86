// LimitingAdaptor: caps the bytes an upstream resource may hand out, per
// resource, per thread or per allocation tag (tenant), hard or soft.
//
//   auto limited = std::make_shared<LimitingAdaptor>(cache, std::vector<LimitRule>{
//       {LimitScope::kResource, 8ull << 30, LimitMode::kHard},
//       {LimitScope::kTag, 2ull << 30, LimitMode::kSoft}});   // each tag
//
//  - kHard: a request that would pass the limit is refused with
//    ResourceExhausted naming the rule, the use and the request; nothing
//    changes and the upstream is not called.
//  - kSoft: the request goes ahead; `on_soft_limit` runs (outside every lock)
//    so the caller can reclaim — shrink a cache, evict — before it is hard.
// Usage is reserved before the upstream call (one lock, no race between two
// requests that each fit alone) and given back if the upstream fails. A free
// is charged to the thread and tag that allocated, whichever thread frees.
// Thread-safe: one mutex around the counters; the upstream runs outside it.
// The counters and the charge table sit in `metadata` (default new/delete),
// node-based: if it throws std::bad_alloc, Allocate fails with
// ResourceExhausted and leaves every counter and the upstream as they were.
#ifndef GPUALLOC_ALLOCATOR_POLICY_LIMITING_ADAPTOR_H_
#define GPUALLOC_ALLOCATOR_POLICY_LIMITING_ADAPTOR_H_

#include <functional>
#include <memory>
#include <memory_resource>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "allocator/common/mutex.h"
#include "allocator/resource/memory_resource.h"

namespace gpualloc {

enum class LimitScope {
  kResource,  // everything this adaptor hands out
  kThread,    // each allocating thread separately
  kTag,       // each allocation tag separately (CurrentAllocationTag())
};
enum class LimitMode { kHard, kSoft };

struct LimitRule {
  LimitRule(LimitScope scope, std::size_t bytes, LimitMode mode = LimitMode::kHard,
            std::string only_tag = "")
      : scope(scope), bytes(bytes), mode(mode), only_tag(std::move(only_tag)) {}

  LimitScope scope;
  std::size_t bytes;
  LimitMode mode;
  // kTag only: the rule applies to this tag alone; empty = to every tag.
  std::string only_tag;
};

// Passed to the soft-limit callback.
struct SoftLimitEvent {
  const LimitRule* rule;
  std::string key;             // "resource", the thread id, or the tag
  std::size_t in_use = 0;      // bytes charged to the key, this request included
  std::size_t requested = 0;
};

class LimitingAdaptor final : public MemoryResource {
 public:
  // `metadata` must outlive the adaptor (null: new/delete).
  LimitingAdaptor(std::shared_ptr<MemoryResource> upstream, std::vector<LimitRule> rules,
                  std::function<void(const SoftLimitEvent&)> on_soft_limit = {},
                  std::pmr::memory_resource* metadata = nullptr);

  absl::string_view name() const override { return "limiting"; }
  DeviceIndex device() const override { return upstream_->device(); }
  std::size_t alignment() const override { return upstream_->alignment(); }
  MemoryStats stats() const override;

  // Bytes charged to a key of a rule right now (for tests and dashboards).
  std::size_t InUse(std::size_t rule_index, const std::string& key) const;

 private:
  absl::StatusOr<Allocation> DoAllocate(std::size_t bytes, Stream stream) override;
  absl::Status DoDeallocate(const Allocation& allocation, Stream stream) override;
  std::string KeyFor(const LimitRule& rule) const;
  // Gives `bytes` back under each rule's key in `keys`; mu_ held.
  void UnchargeLocked(const std::vector<std::string>& keys, std::size_t bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::shared_ptr<MemoryResource> upstream_;
  const std::vector<LimitRule> rules_;
  const std::function<void(const SoftLimitEvent&)> on_soft_limit_;
  mutable Mutex mu_;
  // Per rule: key -> bytes in use.
  std::pmr::vector<std::pmr::unordered_map<std::string, std::size_t>> usage_
      ABSL_GUARDED_BY(mu_);
  // Live allocation -> the key it was charged to under each rule.
  // Standard node-based tables: an insert that throws changes nothing (an
  // Abseil flat table would be left corrupt).
  using ChargeMap = std::pmr::unordered_map<void*, std::vector<std::string>>;
  ChargeMap charged_to_ ABSL_GUARDED_BY(mu_);
  std::uint64_t refusals_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_POLICY_LIMITING_ADAPTOR_H_
