#include "allocator/common/cooperative_scheduler.h"

namespace gpualloc {

constinit thread_local CooperativeScheduler* CooperativeScheduler::current_ = nullptr;

}  // namespace gpualloc
