#include "allocator/backend/sim/address_space.h"

#include "gtest/gtest.h"

namespace gpualloc {
namespace {

TEST(SimAddressSpace, BestFitAndCoalescing) {
  SimAddressSpace space(1000);
  auto a = space.Allocate(100);
  auto b = space.Allocate(200);
  auto c = space.Allocate(100);
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(space.free_bytes(), 600u);
  space.Release(*b, 200);
  // Best fit: a 150-byte request goes into the 200 hole, not the 600 tail.
  auto d = space.Allocate(150);
  ASSERT_TRUE(d);
  EXPECT_EQ(*d, *b);
  space.Release(*d, 150);
  space.Release(*a, 100);
  space.Release(*c, 100);
  EXPECT_EQ(space.free_bytes(), 1000u);
  EXPECT_EQ(space.largest_free_range(), 1000u) << "all neighbours coalesced";
}

TEST(SimAddressSpace, FragmentationCausesOutOfMemoryWithEnoughFreeBytes) {
  SimAddressSpace space(400);
  auto a = space.Allocate(100);
  auto b = space.Allocate(100);
  auto c = space.Allocate(100);
  auto d = space.Allocate(100);
  ASSERT_TRUE(a && b && c && d);
  space.Release(*a, 100);
  space.Release(*c, 100);
  EXPECT_EQ(space.free_bytes(), 200u);
  EXPECT_FALSE(space.Allocate(200).has_value());
  EXPECT_FALSE(space.Allocate(0).has_value());
}

}  // namespace
}  // namespace gpualloc
