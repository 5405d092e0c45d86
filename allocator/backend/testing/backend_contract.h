// The contract every Backend must honour, as a parameterized GoogleTest
// suite. A backend is tested by instantiating it once:
//
//   INSTANTIATE_TEST_SUITE_P(Sim, BackendContract,
//       ::testing::Values(BackendFactory{"sim", [] { return MakeSim(); }}));
//
// When the factory's backend reports no device (DeviceCount fails), every
// test is skipped with the backend's own message, so the same file runs on
// machines with and without a GPU.
#ifndef GPUALLOC_ALLOCATOR_BACKEND_TESTING_BACKEND_CONTRACT_H_
#define GPUALLOC_ALLOCATOR_BACKEND_TESTING_BACKEND_CONTRACT_H_

#include <functional>
#include <memory>
#include <ostream>
#include <string>

#include "allocator/backend/backend.h"
#include "gtest/gtest.h"

namespace gpualloc {

struct BackendFactory {
  std::string name;
  std::function<std::unique_ptr<Backend>()> make;
};

inline void PrintTo(const BackendFactory& f, std::ostream* os) { *os << f.name; }

class BackendContract : public ::testing::TestWithParam<BackendFactory> {
 protected:
  void SetUp() override;
  std::unique_ptr<Backend> backend_;
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_BACKEND_TESTING_BACKEND_CONTRACT_H_
