#include "harness/testing/failing_memory_resource.h"

#include <cstdio>
#include <cstdlib>
#include <new>

namespace gpualloc::harness {

FailingMemoryResource::~FailingMemoryResource() {
  if (!handed_.empty()) {
    std::fprintf(stderr,
                 "FailingMemoryResource: destroyed with %zu blocks (%zu bytes) never given back\n",
                 handed_.size(), outstanding_bytes_);
    std::abort();
  }
}

void FailingMemoryResource::FailAt(std::uint64_t k) {
  std::lock_guard<std::mutex> lock(mu_);
  countdown_ = k;
  fail_all_ = false;
}

void FailingMemoryResource::FailAll() {
  std::lock_guard<std::mutex> lock(mu_);
  countdown_ = 0;
  fail_all_ = true;
}

std::uint64_t FailingMemoryResource::allocations() const {
  std::lock_guard<std::mutex> lock(mu_);
  return allocations_;
}

std::uint64_t FailingMemoryResource::failures() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failures_;
}

std::size_t FailingMemoryResource::outstanding_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return outstanding_bytes_;
}

std::size_t FailingMemoryResource::outstanding_blocks() const {
  std::lock_guard<std::mutex> lock(mu_);
  return handed_.size();
}

void* FailingMemoryResource::do_allocate(std::size_t bytes, std::size_t alignment) {
  std::lock_guard<std::mutex> lock(mu_);
  if (fail_all_ || (countdown_ != 0 && --countdown_ == 0)) {
    ++failures_;
    throw std::bad_alloc();
  }
  void* p = ::operator new(bytes, std::align_val_t(alignment));
  try {
    handed_.emplace(p, Handed{bytes, alignment});
  } catch (...) {
    ::operator delete(p, std::align_val_t(alignment));
    throw;
  }
  ++allocations_;
  outstanding_bytes_ += bytes;
  return p;
}

void FailingMemoryResource::do_deallocate(void* p, std::size_t bytes, std::size_t alignment) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = handed_.find(p);
  if (it == handed_.end() || it->second.bytes != bytes || it->second.alignment != alignment) {
    std::fprintf(stderr,
                 "FailingMemoryResource: deallocate(%p, %zu bytes, align %zu) does not match "
                 "what was handed out (%s)\n",
                 p, bytes, alignment, it == handed_.end() ? "never handed out" : "other size");
    std::abort();
  }
  outstanding_bytes_ -= bytes;
  handed_.erase(it);
  ::operator delete(p, std::align_val_t(alignment));
}

}  // namespace gpualloc::harness
