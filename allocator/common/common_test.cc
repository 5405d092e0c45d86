#include <limits>
#include <new>
#include <stdexcept>

#include "allocator/common/checked_math.h"
#include "allocator/common/exception_boundary.h"
#include "allocator/common/status_macros.h"
#include "gtest/gtest.h"

namespace gpualloc {
namespace {

constexpr std::size_t kMax = std::numeric_limits<std::size_t>::max();

TEST(CheckedMath, AddAndMulDetectWrap) {
  EXPECT_EQ(CheckedAdd(1, 2), 3u);
  EXPECT_FALSE(CheckedAdd(kMax, 1).has_value());
  EXPECT_EQ(CheckedMul(1u << 20, 1u << 10), std::size_t{1} << 30);
  EXPECT_FALSE(CheckedMul(kMax / 2 + 1, 2).has_value());
}

TEST(CheckedMath, RoundUpNeverWraps) {
  EXPECT_EQ(CheckedRoundUp(0, 256), 0u);
  EXPECT_EQ(CheckedRoundUp(1, 256), 256u);
  EXPECT_EQ(CheckedRoundUp(256, 256), 256u);
  EXPECT_EQ(CheckedRoundUp(257, 256), 512u);
  EXPECT_EQ(CheckedRoundUp(4097, 512), 4608u);
  EXPECT_EQ(CheckedRoundUp(1000, 3), 1002u);
  EXPECT_FALSE(CheckedRoundUp(kMax - 10, 256).has_value());
  EXPECT_FALSE(CheckedRoundUp(5, 0).has_value());
}

TEST(ExceptionBoundary, EveryExceptionKindBecomesAStatusNamingTheOperation) {
  auto bad_alloc = CallAtBoundary("op1", []() -> absl::Status { throw std::bad_alloc(); });
  EXPECT_EQ(bad_alloc.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(bad_alloc.message().find("op1"), absl::string_view::npos);

  auto runtime = CallAtBoundary("op2", []() -> absl::StatusOr<int> {
    throw std::runtime_error("boom");
  });
  EXPECT_EQ(runtime.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(runtime.status().message().find("boom"), absl::string_view::npos);

  struct Foreign {};
  auto foreign = CallAtBoundary("op3", []() -> absl::Status { throw Foreign{}; });
  EXPECT_NE(foreign.message().find("non-standard"), absl::string_view::npos);

  EXPECT_EQ(CallAtBoundary("ok", []() -> absl::StatusOr<int> { return 7; }).value(), 7);
}

TEST(ExceptionBoundary, NamedVariantBuildsTheNameOnlyWhenSomethingIsThrown) {
  int built = 0;
  auto name = [&] {
    ++built;
    return std::string("lazy op");
  };
  EXPECT_TRUE(CallAtBoundaryNamed(name, [] { return absl::OkStatus(); }).ok());
  EXPECT_EQ(built, 0);
  absl::Status st = CallAtBoundaryNamed(name, []() -> absl::Status { throw std::runtime_error("x"); });
  EXPECT_EQ(built, 1);
  EXPECT_NE(st.message().find("lazy op"), absl::string_view::npos);
}

absl::StatusOr<int> Twice(absl::StatusOr<int> in) {
  GPUALLOC_ASSIGN_OR_RETURN(int v, in);
  GPUALLOC_RETURN_IF_ERROR(v < 0 ? absl::InvalidArgumentError("negative") : absl::OkStatus());
  return 2 * v;
}

TEST(StatusMacros, PropagateErrorsAndValues) {
  EXPECT_EQ(Twice(4).value(), 8);
  EXPECT_EQ(Twice(absl::NotFoundError("x")).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Twice(-1).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace gpualloc
