#include "allocator/caching/size_class_pool.h"

#include <algorithm>
#include <iterator>
#include <new>

#include "absl/strings/str_format.h"
#include "allocator/common/exception_boundary.h"
#include "allocator/common/node_insert.h"

namespace gpualloc {

absl::StatusOr<std::unique_ptr<SizeClassPool>> SizeClassPool::Create(
    std::shared_ptr<MemoryResource> upstream, std::shared_ptr<Backend> backend,
    SizeClassOptions options) {
  if (upstream == nullptr || backend == nullptr) {
    return absl::InvalidArgumentError("size-class pool: needs an upstream and a backend");
  }
  std::size_t previous = 0;
  for (std::size_t c : options.classes) {
    if (c <= previous || c % upstream->alignment() != 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "size-class pool: classes must ascend and be multiples of %d; got %d after %d",
          upstream->alignment(), c, previous));
    }
    previous = c;
  }
  if (options.classes.empty() || options.slab_bytes < previous) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "size-class pool: slab_bytes (%d) must hold the largest class (%d)", options.slab_bytes,
        previous));
  }
  return std::unique_ptr<SizeClassPool>(
      new SizeClassPool(std::move(upstream), std::move(backend), std::move(options)));
}

SizeClassPool::SizeClassPool(std::shared_ptr<MemoryResource> upstream,
                             std::shared_ptr<Backend> backend, SizeClassOptions options)
    : upstream_(std::move(upstream)), backend_(std::move(backend)), options_(std::move(options)) {
  for (std::size_t bytes : options_.classes) {
    classes_.push_back(std::make_unique<SizeClass>());
    classes_.back()->bytes = bytes;
    classes_.back()->stats.class_bytes = bytes;
  }
}

SizeClassPool::~SizeClassPool() {
  CallAtBoundary("device synchronize", [&] {
    return backend_->DeviceSynchronize(upstream_->device());
  }).IgnoreError();
  for (auto& c : classes_) {
    for (auto& [base, slab] : c->slabs) upstream_->DeallocateAfterSync(slab->allocation).IgnoreError();
  }
  for (auto& [ptr, bytes] : passthrough_) {
    upstream_->Deallocate(Allocation{ptr, bytes, Stream::Default(upstream_->device())}).IgnoreError();
  }
}

SizeClassPool::SizeClass* SizeClassPool::ClassFor(std::size_t bytes) {
  for (auto& c : classes_) {
    if (bytes <= c->bytes) return c.get();
  }
  return nullptr;
}

absl::StatusOr<Allocation> SizeClassPool::DoAllocate(std::size_t bytes, Stream stream) {
  SizeClass* c = ClassFor(bytes);
  if (c == nullptr) {  // too large for any class: straight through
    absl::StatusOr<Allocation> a = upstream_->Allocate(bytes, stream);
    if (!a.ok()) return a;
    MutexLock lock(passthrough_mu_);
    try {
      passthrough_.emplace(a->ptr, bytes);  // strong: unchanged if it throws
    } catch (...) {
      upstream_->Deallocate(*a).IgnoreError();  // untracked memory must not escape
      throw;
    }
    return a;
  }
  MutexLock lock(c->mu);
  // Fallible work first: the live entry, before anything changes.
  auto entry = PrepareInsert(c->live, std::uintptr_t{0}, LiveBlock{bytes, nullptr});
  FreeBlock block{0, nullptr};
  auto free_list = c->free_by_stream.find(stream.handle);
  if (free_list != c->free_by_stream.end() && !free_list->second.empty()) {
    block = free_list->second.back();
    free_list->second.pop_back();
    ++c->stats.hits;
  } else {
    // A slab of this stream with never-used room, else a new one on this
    // stream: the upstream made the slab safe on its own stream only.
    for (auto& [base, slab] : c->slabs) {
      if (slab->allocation.stream == stream &&
          slab->next_unused + c->bytes <= slab->allocation.bytes) {
        block = FreeBlock{base + slab->next_unused, slab.get()};
        slab->next_unused += c->bytes;
        break;
      }
    }
    if (block.slab == nullptr) {
      auto slab = std::make_unique<Slab>();  // before the upstream call: may throw
      absl::StatusOr<Allocation> s = upstream_->Allocate(options_.slab_bytes, stream);
      if (!s.ok()) return s.status();
      slab->allocation = *s;
      slab->next_unused = c->bytes;
      block = FreeBlock{reinterpret_cast<std::uintptr_t>(s->ptr), slab.get()};
      try {
        c->slabs.emplace(block.address, std::move(slab));
      } catch (...) {
        upstream_->Deallocate(*s).IgnoreError();  // no slab may leak
        throw;
      }
      c->empty_slab_bytes += s->bytes;  // until the block below is counted
      ++c->stats.slabs;
    }
    ++c->stats.misses;
  }
  if (block.slab->live++ == 0) c->empty_slab_bytes -= block.slab->allocation.bytes;
  block.slab->last_used = ++c->tick;
  entry.key() = block.address;
  entry.mapped().slab = block.slab;
  CommitInsert(c->live, std::move(entry));
  ++c->stats.live_blocks;
  return Allocation{reinterpret_cast<void*>(block.address), bytes, stream};
}

absl::Status SizeClassPool::DoDeallocate(const Allocation& allocation, Stream stream) {
  SizeClass* c = ClassFor(allocation.bytes);
  if (c == nullptr) {
    decltype(passthrough_)::node_type entry;
    {
      MutexLock lock(passthrough_mu_);
      auto it = passthrough_.find(allocation.ptr);
      if (it == passthrough_.end() || it->second != allocation.bytes) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "size-class pool: %p (%d bytes) was not allocated here or was already freed",
            allocation.ptr, allocation.bytes));
      }
      entry = passthrough_.extract(it);
    }
    absl::Status st = upstream_->Deallocate(allocation, stream);
    if (!st.ok()) {
      MutexLock lock(passthrough_mu_);
      passthrough_.insert(std::move(entry));  // still live: back without allocating
    }
    return st;
  }
  MutexLock lock(c->mu);
  const auto p = reinterpret_cast<std::uintptr_t>(allocation.ptr);
  auto it = c->live.find(p);
  if (it == c->live.end() || it->second.requested != allocation.bytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "size-class pool: %p (%d bytes) was not allocated here, was already freed, or is the "
        "wrong size",
        allocation.ptr, allocation.bytes));
  }
  Slab* slab = it->second.slab;
  std::vector<FreeBlock>& list = c->free_by_stream[stream.handle];
  list.push_back(FreeBlock{p, slab});  // may throw: nothing changed yet except the (valid) push
  c->live.erase(it);
  --c->stats.live_blocks;
  if (--slab->live == 0) {
    c->empty_slab_bytes += slab->allocation.bytes;
    if (c->empty_slab_bytes > options_.max_cached_empty_bytes) {
      try {
        ReleaseEmptySlabs(*c, options_.max_cached_empty_bytes);
      } catch (const std::bad_alloc&) {
        // The free is done; the empty slabs stay cached until the next try.
      }
    }
  }
  return absl::OkStatus();
}

void SizeClassPool::ReleaseEmptySlabs(SizeClass& c, std::size_t keep) {
  std::vector<Slab*> empty;
  std::size_t empty_bytes = 0;
  for (auto& [base, s] : c.slabs) {
    if (s->live == 0) {
      empty.push_back(s.get());
      empty_bytes += s->allocation.bytes;
    }
  }
  if (empty_bytes <= keep) return;
  std::sort(empty.begin(), empty.end(),
            [](const Slab* a, const Slab* b) { return a->last_used < b->last_used; });
  // Its blocks may have been used on any stream: wait for the device first.
  if (!CallAtBoundary("device synchronize", [&] {
         return backend_->DeviceSynchronize(upstream_->device());
       }).ok()) {
    return;
  }
  for (Slab* s : empty) {
    if (empty_bytes <= keep) break;
    const auto lo = reinterpret_cast<std::uintptr_t>(s->allocation.ptr);
    // Synchronised: no stream is named (the slab's may have been destroyed).
    if (!upstream_->DeallocateAfterSync(s->allocation).ok()) continue;
    for (auto& [stream, list] : c.free_by_stream) {
      list.erase(std::remove_if(list.begin(), list.end(),
                                [&](const FreeBlock& b) { return b.slab == s; }),
                 list.end());
    }
    empty_bytes -= s->allocation.bytes;
    c.empty_slab_bytes -= s->allocation.bytes;
    ++c.stats.returns;
    --c.stats.slabs;
    c.slabs.erase(lo);
  }
}

absl::Status SizeClassPool::Trim() {
  for (auto& c : classes_) {
    MutexLock lock(c->mu);
    ReleaseEmptySlabs(*c, 0);
  }
  return absl::OkStatus();
}

MemoryStats SizeClassPool::stats() const {
  MemoryStats s;
  for (const auto& c : classes_) {
    MutexLock lock(c->mu);
    for (const auto& [p, block] : c->live) {
      s.allocated_bytes.Add(static_cast<std::int64_t>(c->bytes));
      s.requested_bytes.Add(static_cast<std::int64_t>(block.requested));
      s.active_blocks.Add(1);
    }
    s.reserved_bytes.Add(static_cast<std::int64_t>(c->slabs.size() * options_.slab_bytes));
    s.segments.Add(static_cast<std::int64_t>(c->slabs.size()));
    s.cache_hits += c->stats.hits;
    s.cache_misses += c->stats.misses;
    s.upstream_allocs += c->stats.slabs + c->stats.returns;
    s.upstream_frees += c->stats.returns;
  }
  // Pass-through allocations are the upstream's: count them as reserved and allocated.
  MutexLock lock(passthrough_mu_);
  for (const auto& [p, bytes] : passthrough_) {
    s.allocated_bytes.Add(static_cast<std::int64_t>(bytes));
    s.requested_bytes.Add(static_cast<std::int64_t>(bytes));
    s.reserved_bytes.Add(static_cast<std::int64_t>(bytes));
    s.active_blocks.Add(1);
  }
  return s;
}

std::vector<SizeClassStats> SizeClassPool::class_stats() const {
  std::vector<SizeClassStats> out;
  for (const auto& c : classes_) {
    MutexLock lock(c->mu);
    out.push_back(c->stats);
  }
  return out;
}

}  // namespace gpualloc
