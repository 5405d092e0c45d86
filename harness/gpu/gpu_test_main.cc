// main() for `gpu`-tagged tests: GoogleTest, plus a global environment that
// fails the whole binary up front, with one clear message, when the machine
// has no device of GPUALLOC_TEST_RUNTIME (set by the BUILD target).
#include <cstdio>

#include "gtest/gtest.h"
#include "harness/gpu/require_device.h"

#ifndef GPUALLOC_TEST_RUNTIME
#error "GPUALLOC_TEST_RUNTIME must name the runtime (\"cuda\" or \"hip\")"
#endif

namespace {

class RequireDeviceEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    const absl::Status status = gpualloc::harness::RequireDevice(GPUALLOC_TEST_RUNTIME);
    if (!status.ok()) {
      std::fprintf(stderr, "%s\n", std::string(status.message()).c_str());
      GTEST_FAIL() << status.message();
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::AddGlobalTestEnvironment(new RequireDeviceEnvironment);
  return RUN_ALL_TESTS();
}
