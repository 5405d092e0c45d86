#include "allocator/backend/hip/hip_backend.h"
#include "allocator/backend/testing/backend_contract.h"

namespace gpualloc {
namespace {

INSTANTIATE_TEST_SUITE_P(Hip, BackendContract,
                         ::testing::Values(BackendFactory{"hip", [] { return MakeHipBackend(); }}));

}  // namespace
}  // namespace gpualloc
