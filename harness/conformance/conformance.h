// The MemoryResource conformance suite: the contract every allocator we ship
// must honour, as one parameterized GoogleTest suite (RMM's mr_tests are the
// model). To run it against your own allocator, write a factory and one line:
//
//   gpualloc::harness::ResourceUnderTest MakeMine() {
//     auto sim = std::make_shared<gpualloc::SimBackend>(
//         gpualloc::SimOptions::WithDevices(1, 256 << 20));
//     return {std::make_shared<MyResource>(sim, 0), sim, /*release_cache=*/nullptr,
//             /*record_stream=*/nullptr, /*device=*/sim};
//   }
//
// On a real device, leave `sim` null and set `device` to the backend (see
// harness/gpu/cuda_conformance_test.cc): every case runs, with the device's
// own copies for the data checks, real streams held back by a host function
// so memory changes hands with work in flight, and contents read back to
// judge stream order; the leak check uses the stats and the device's free
// memory instead of the sim's accounting.
//   GPUALLOC_INSTANTIATE_CONFORMANCE(Mine, MakeMine);
//
// and link the target against //harness/conformance (see
// harness/conformance/example/). The suite checks: alignment; zero and absurd
// sizes; no two live allocations overlap; data written reads back intact;
// frees on other streams and from other threads; stats consistency; OOM
// reported, never a crash; bad frees rejected without changing anything;
// stream order (memory used by kernels on streams, freed with work still
// queued, reused on the same stream and on others, used on several streams
// and recorded or waited for: the sim's stream-order checker must find no
// access that happens-before does not order, in any case; on a real device,
// no stream's late work shows in memory that changed hands); and that the
// device's memory is all given back at the end.
#ifndef GPUALLOC_HARNESS_CONFORMANCE_CONFORMANCE_H_
#define GPUALLOC_HARNESS_CONFORMANCE_CONFORMANCE_H_

#include <functional>
#include <memory>
#include <ostream>
#include <string>

#include "allocator/backend/sim/sim_backend.h"
#include "allocator/resource/memory_resource.h"
#include "gtest/gtest.h"

namespace gpualloc::harness {

struct ResourceUnderTest {
  std::shared_ptr<MemoryResource> resource;
  // The simulated device under it, if any: its stream-order checker and its
  // accounting judge every case.
  std::shared_ptr<SimBackend> sim;
  // Returns cached memory to the device before the leak check (e.g. a
  // caching allocator's EmptyCache); may be empty.
  std::function<absl::Status()> release_cache;
  // Tells the resource that an allocation is used on another stream too
  // (CachingAllocator::RecordStream), for resources that can; empty for
  // the others, whose users order other streams' work before the free.
  std::function<absl::Status(const Allocation&, Stream)> record_stream;
  // The device the memory lives on; the sim when null.
  std::shared_ptr<Backend> device;
};

struct ResourceFactory {
  std::string name;
  std::function<ResourceUnderTest()> make;
};
inline void PrintTo(const ResourceFactory& f, std::ostream* os) { *os << f.name; }

class ResourceConformance : public ::testing::TestWithParam<ResourceFactory> {
 protected:
  void SetUp() override;
  void TearDown() override;
  ResourceUnderTest under_test_;
  MemoryResource& resource() { return *under_test_.resource; }
  Backend& device() { return *under_test_.device; }
  // A real device's free bytes before the case, for the leak check.
  std::size_t free_before_ = 0;
};

}  // namespace gpualloc::harness

// Instantiates the whole conformance suite for `factory` (a function returning
// ResourceUnderTest), under the name `name`.
// Use it at namespace scope, in any namespace.
#define GPUALLOC_INSTANTIATE_CONFORMANCE(name, factory)         \
  using ::gpualloc::harness::ResourceConformance;                \
  INSTANTIATE_TEST_SUITE_P(name, ResourceConformance,            \
                           ::testing::Values(::gpualloc::harness::ResourceFactory{#name, factory}))

#endif  // GPUALLOC_HARNESS_CONFORMANCE_CONFORMANCE_H_
