// Early-return helpers for absl::Status / absl::StatusOr, the project's one
// error channel (Abseil ships none publicly in the version Debian packages).
#ifndef GPUALLOC_ALLOCATOR_COMMON_STATUS_MACROS_H_
#define GPUALLOC_ALLOCATOR_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define GPUALLOC_RETURN_IF_ERROR(expr)                  \
  do {                                                  \
    ::absl::Status gpualloc_status_ = (expr);           \
    if (!gpualloc_status_.ok()) return gpualloc_status_; \
  } while (0)

#define GPUALLOC_CONCAT_INNER_(a, b) a##b
#define GPUALLOC_CONCAT_(a, b) GPUALLOC_CONCAT_INNER_(a, b)

// `GPUALLOC_ASSIGN_OR_RETURN(auto x, StatusOrExpr());` declares/assigns `x`
// from the value, or returns the error from the enclosing function.
#define GPUALLOC_ASSIGN_OR_RETURN(lhs, expr) \
  GPUALLOC_ASSIGN_OR_RETURN_IMPL_(GPUALLOC_CONCAT_(gpualloc_or_, __LINE__), lhs, expr)
#define GPUALLOC_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                    \
  if (!tmp.ok()) return tmp.status();                   \
  lhs = std::move(tmp).value()

#endif  // GPUALLOC_ALLOCATOR_COMMON_STATUS_MACROS_H_
