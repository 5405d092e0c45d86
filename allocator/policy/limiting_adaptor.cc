#include "allocator/policy/limiting_adaptor.h"

#include <sstream>

#include "absl/strings/str_format.h"
#include "allocator/common/pmr_object.h"
#include "allocator/policy/allocation_tag.h"

namespace gpualloc {
namespace {

const char* ScopeName(LimitScope s) {
  switch (s) {
    case LimitScope::kResource: return "resource";
    case LimitScope::kThread: return "thread";
    case LimitScope::kTag: return "tag";
  }
  return "?";
}

}  // namespace

LimitingAdaptor::LimitingAdaptor(std::shared_ptr<MemoryResource> upstream,
                                 std::vector<LimitRule> rules,
                                 std::function<void(const SoftLimitEvent&)> on_soft_limit,
                                 std::pmr::memory_resource* metadata)
    : upstream_(std::move(upstream)),
      rules_(std::move(rules)),
      on_soft_limit_(std::move(on_soft_limit)),
      usage_(rules_.size(), MetadataResourceOr(metadata)),
      charged_to_(MetadataResourceOr(metadata)) {}

std::string LimitingAdaptor::KeyFor(const LimitRule& rule) const {
  switch (rule.scope) {
    case LimitScope::kResource:
      return "resource";
    case LimitScope::kThread: {
      std::ostringstream id;
      id << std::this_thread::get_id();
      return id.str();
    }
    case LimitScope::kTag:
      return std::string(CurrentAllocationTag());
  }
  return "";
}

MemoryStats LimitingAdaptor::stats() const {
  MemoryStats s = upstream_->stats();
  MutexLock lock(mu_);
  s.oom_events += refusals_;
  return s;
}

std::size_t LimitingAdaptor::InUse(std::size_t rule_index, const std::string& key) const {
  MutexLock lock(mu_);
  if (rule_index >= usage_.size()) return 0;
  auto it = usage_[rule_index].find(key);
  return it == usage_[rule_index].end() ? 0 : it->second;
}

void LimitingAdaptor::UnchargeLocked(const std::vector<std::string>& keys, std::size_t bytes) {
  for (std::size_t i = 0; i < rules_.size(); ++i) {
    auto it = usage_[i].find(keys[i]);
    if (it != usage_[i].end()) it->second -= bytes;
  }
}

absl::StatusOr<Allocation> LimitingAdaptor::DoAllocate(std::size_t bytes, Stream stream) {
  std::vector<std::string> keys(rules_.size());
  std::vector<SoftLimitEvent> soft;
  {
    MutexLock lock(mu_);
    for (std::size_t i = 0; i < rules_.size(); ++i) {
      const LimitRule& rule = rules_[i];
      keys[i] = KeyFor(rule);
      if (rule.scope == LimitScope::kTag && !rule.only_tag.empty() && keys[i] != rule.only_tag) {
        keys[i].clear();  // the rule does not apply to this tag
        continue;
      }
      const std::size_t in_use = usage_[i][keys[i]];
      if (bytes > rule.bytes || in_use > rule.bytes - bytes) {
        if (rule.mode == LimitMode::kHard) {
          ++refusals_;
          return absl::ResourceExhaustedError(absl::StrFormat(
              "limit refused %d bytes: the hard %s limit of %d bytes for '%s' has %d in use",
              bytes, ScopeName(rule.scope), rule.bytes, keys[i], in_use));
        }
        soft.push_back(SoftLimitEvent{&rule, keys[i], in_use + bytes, bytes});
      }
    }
    // Reserve under every rule before the upstream call.
    for (std::size_t i = 0; i < rules_.size(); ++i) {
      if (!(rules_[i].scope == LimitScope::kTag && !rules_[i].only_tag.empty() && keys[i].empty())) {
        usage_[i][keys[i]] += bytes;
      }
    }
  }
  for (const SoftLimitEvent& e : soft) {
    if (!on_soft_limit_) break;
    try {
      on_soft_limit_(e);  // outside the lock: it may free through us
    } catch (...) {
      // A reclaim hook that throws reclaimed nothing; the request proceeds.
    }
  }
  absl::StatusOr<Allocation> a = upstream_->Allocate(bytes, stream);
  if (!a.ok()) {
    MutexLock lock(mu_);
    UnchargeLocked(keys, bytes);
    return a.status();
  }
  MutexLock lock(mu_);
  try {
    charged_to_.emplace(a->ptr, keys);
  } catch (...) {
    UnchargeLocked(keys, bytes);
    upstream_->Deallocate(*a).IgnoreError();
    throw;
  }
  return a;
}

absl::Status LimitingAdaptor::DoDeallocate(const Allocation& allocation, Stream stream) {
  // Taken out before the upstream free: once the upstream has the memory back
  // another thread may receive the same pointer and must find no entry.
  ChargeMap::node_type charged;
  {
    MutexLock lock(mu_);
    auto it = charged_to_.find(allocation.ptr);
    if (it == charged_to_.end()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "limiting adaptor: %p was not allocated through it or was already freed", allocation.ptr));
    }
    charged = charged_to_.extract(it);
  }
  absl::Status st = upstream_->Deallocate(allocation, stream);
  MutexLock lock(mu_);
  if (!st.ok()) {
    charged_to_.insert(std::move(charged));  // still live and still charged
    return st;
  }
  UnchargeLocked(charged.mapped(), allocation.bytes);
  return absl::OkStatus();
}

}  // namespace gpualloc
