#include "allocator/backend/cuda/cuda_backend.h"
#include "allocator/backend/testing/backend_contract.h"

namespace gpualloc {
namespace {

INSTANTIATE_TEST_SUITE_P(Cuda, BackendContract,
                         ::testing::Values(BackendFactory{"cuda", [] { return MakeCudaBackend(); }}));

}  // namespace
}  // namespace gpualloc
