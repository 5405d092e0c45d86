// How owners that free in a destructor report a failure they cannot return:
// a line on stderr naming the memory and the reason (the resource's own
// stats count it too). Never throws.
#ifndef GPUALLOC_ALLOCATOR_BUFFER_RELEASE_REPORT_H_
#define GPUALLOC_ALLOCATOR_BUFFER_RELEASE_REPORT_H_

#include <cstdio>
#include <string>

#include "absl/status/status.h"

namespace gpualloc {

inline void ReportReleaseFailure(const char* owner, const void* ptr, std::size_t bytes,
                                 const absl::Status& status) noexcept {
  std::fprintf(stderr, "gpualloc: %s could not release %p (%zu bytes): %.*s\n", owner, ptr, bytes,
               static_cast<int>(status.message().size()), status.message().data());
}

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_BUFFER_RELEASE_REPORT_H_
