// Size arithmetic that cannot wrap. Every size a user hands us goes through
// these before it reaches a backend, so an absurd request fails with a clear
// error instead of becoming a small allocation.
#ifndef GPUALLOC_ALLOCATOR_COMMON_CHECKED_MATH_H_
#define GPUALLOC_ALLOCATOR_COMMON_CHECKED_MATH_H_

#include <cstddef>
#include <optional>

namespace gpualloc {

// a + b, or nullopt if it does not fit in size_t.
constexpr std::optional<std::size_t> CheckedAdd(std::size_t a, std::size_t b) {
  std::size_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}

// a * b, or nullopt if it does not fit in size_t.
constexpr std::optional<std::size_t> CheckedMul(std::size_t a, std::size_t b) {
  std::size_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}

// The smallest multiple of `alignment` (> 0, any value) that is >= `n`, or
// nullopt if that multiple does not fit in size_t.
constexpr std::optional<std::size_t> CheckedRoundUp(std::size_t n, std::size_t alignment) {
  if (alignment == 0) return std::nullopt;
  // A power of two (every alignment the allocators use) needs no division.
  const std::size_t rem =
      (alignment & (alignment - 1)) == 0 ? n & (alignment - 1) : n % alignment;
  if (rem == 0) return n;
  return CheckedAdd(n, alignment - rem);
}

constexpr bool IsPowerOfTwo(std::size_t n) { return n != 0 && (n & (n - 1)) == 0; }

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_COMMON_CHECKED_MATH_H_
