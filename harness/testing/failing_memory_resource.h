// FailingMemoryResource: a std::pmr::memory_resource for tests that throws
// std::bad_alloc on chosen allocations and checks that everything it handed
// out comes back, to the byte and with the same size and alignment.
//
// Injected as a component's metadata resource (CachingOptions::
// metadata_resource), it fails the component's host bookkeeping at exactly
// the allocation a test picks, so a test can sweep every allocation point:
//
//   FailingMemoryResource metadata;
//   options.metadata_resource = &metadata;
//   ...
//   metadata.FailAt(k);   // the k-th allocation from now throws
//   EXPECT_FALSE(cache->Allocate(n).ok());
//   ...
//   EXPECT_EQ(metadata.outstanding_bytes(), 0u);  // after the component is gone
//
// Thread-safe. Freeing a pointer it did not hand out, or with another size or
// alignment, aborts with a message: that is a bug in the component under test.
#ifndef GPUALLOC_HARNESS_TESTING_FAILING_MEMORY_RESOURCE_H_
#define GPUALLOC_HARNESS_TESTING_FAILING_MEMORY_RESOURCE_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory_resource>
#include <mutex>

namespace gpualloc::harness {

class FailingMemoryResource final : public std::pmr::memory_resource {
 public:
  ~FailingMemoryResource() override;  // aborts if memory is still out

  // The k-th allocation from now (1 = the next) throws std::bad_alloc, once.
  // 0 disarms.
  void FailAt(std::uint64_t k);
  // Every allocation from now throws until FailAt(0) or FailNone().
  void FailAll();
  void FailNone() { FailAt(0); }

  std::uint64_t allocations() const;  // successful ones, ever
  std::uint64_t failures() const;     // thrown, ever
  std::size_t outstanding_bytes() const;
  std::size_t outstanding_blocks() const;

 private:
  void* do_allocate(std::size_t bytes, std::size_t alignment) override;
  void do_deallocate(void* p, std::size_t bytes, std::size_t alignment) override;
  bool do_is_equal(const std::pmr::memory_resource& other) const noexcept override {
    return this == &other;
  }

  struct Handed {
    std::size_t bytes;
    std::size_t alignment;
  };
  mutable std::mutex mu_;
  std::uint64_t countdown_ = 0;  // 0: disarmed
  bool fail_all_ = false;
  std::uint64_t allocations_ = 0;
  std::uint64_t failures_ = 0;
  std::size_t outstanding_bytes_ = 0;
  std::map<const void*, Handed> handed_;
};

}  // namespace gpualloc::harness

#endif  // GPUALLOC_HARNESS_TESTING_FAILING_MEMORY_RESOURCE_H_
