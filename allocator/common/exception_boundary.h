// The boundary where C++ exceptions become absl::Status. Backends and user
// callbacks may throw (a throwing mock, std::bad_alloc from metadata); the
// public API never does, so every call into foreign code goes through here.
#ifndef GPUALLOC_ALLOCATOR_COMMON_EXCEPTION_BOUNDARY_H_
#define GPUALLOC_ALLOCATOR_COMMON_EXCEPTION_BOUNDARY_H_

#include <exception>
#include <new>
#include <stdexcept>
#include "absl/strings/string_view.h"
#include <type_traits>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace gpualloc {

// Converts the exception currently being handled into a Status that names
// `operation` and the exception's message. Call only inside a catch block.
inline absl::Status StatusFromCurrentException(absl::string_view operation) {
  try {
    throw;
  } catch (const std::bad_alloc& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat(operation, ": threw std::bad_alloc: ", e.what()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(operation, ": threw exception: ", e.what()));
  } catch (...) {
    return absl::InternalError(absl::StrCat(operation, ": threw a non-standard exception"));
  }
}

// Runs `fn` (returning Status or StatusOr<T>) and turns anything it throws
// into an error Status naming `operation`.
template <typename Fn>
auto CallAtBoundary(absl::string_view operation, Fn&& fn) noexcept -> decltype(fn()) {
  try {
    return std::forward<Fn>(fn)();
  } catch (...) {
    return StatusFromCurrentException(operation);
  }
}

// As CallAtBoundary, but the operation's name is built by `name()` only when
// something was thrown: hot paths pay nothing for a descriptive message.
template <typename NameFn, typename Fn>
auto CallAtBoundaryNamed(NameFn&& name, Fn&& fn) noexcept -> decltype(fn()) {
  try {
    return std::forward<Fn>(fn)();
  } catch (...) {
    return StatusFromCurrentException(name());
  }
}

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_COMMON_EXCEPTION_BOUNDARY_H_
