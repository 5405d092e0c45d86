#include "allocator/adapters/alloc_conf.h"

#include <string>

#include "gtest/gtest.h"

namespace gpualloc {
namespace {

TEST(AllocConf, EveryKeyIsApplied) {
  absl::StatusOr<CachingOptions> o = ApplyAllocConf(
      "expandable_segments:True, cross_stream:none,limit_mb:2048,gc_threshold:0.75,"
      "max_split_size_mb:64",
      CachingOptions{});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->expandable_segments);
  EXPECT_EQ(o->cross_stream, CrossStreamReuse::kNone);
  EXPECT_EQ(o->reserved_limit, std::size_t{2048} << 20);
  EXPECT_DOUBLE_EQ(o->gc_threshold, 0.75);
  EXPECT_EQ(o->max_split_bytes, std::size_t{64} << 20);
}

TEST(AllocConf, EverySpellingOfTrueAndFalseIsAccepted) {
  for (const char* yes : {"True", "true", "1"}) {
    absl::StatusOr<CachingOptions> o =
        ApplyAllocConf(std::string("expandable_segments:") + yes, CachingOptions{});
    ASSERT_TRUE(o.ok()) << yes << ": " << o.status();
    EXPECT_TRUE(o->expandable_segments) << yes;
  }
  CachingOptions on;
  on.expandable_segments = true;
  for (const char* no : {"False", "false", "0"}) {
    absl::StatusOr<CachingOptions> o = ApplyAllocConf(std::string("expandable_segments:") + no, on);
    ASSERT_TRUE(o.ok()) << no << ": " << o.status();
    EXPECT_FALSE(o->expandable_segments) << no;
  }
}

TEST(AllocConf, EmptyKeepsTheDefaults) {
  CachingOptions base;
  base.cross_stream = CrossStreamReuse::kOpportunistic;
  absl::StatusOr<CachingOptions> o = ApplyAllocConf("", base);
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->cross_stream, CrossStreamReuse::kOpportunistic);
  EXPECT_FALSE(o->expandable_segments);
}

TEST(AllocConf, BadInputIsAnErrorNamingThePair) {
  struct Case {
    const char* conf;
    const char* names;
  };
  for (const Case& c : {Case{"expandable_segment:True", "expandable_segment:True"},
                        Case{"expandable_segments:yes", "expected True or False"},
                        Case{"cross_stream:always", "cross_stream:always"},
                        Case{"limit_mb:0", "limit_mb:0"},
                        Case{"limit_mb:-5", "limit_mb:-5"},
                        Case{"limit_mb:12abc", "limit_mb:12abc"},
                        Case{"gc_threshold:1.5", "gc_threshold:1.5"},
                        Case{"gc_threshold:nan", "gc_threshold:nan"},
                        Case{"gc_threshold:0", "between 0 and 1 (exclusive)"},
                        Case{"gc_threshold:1", "between 0 and 1 (exclusive)"},
                        Case{"limit_mb", "expected key:value"},
                        Case{"limit_mb:1,limit_mb:2", "given twice"}}) {
    absl::StatusOr<CachingOptions> o = ApplyAllocConf(c.conf, CachingOptions{});
    ASSERT_FALSE(o.ok()) << c.conf;
    EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument) << c.conf;
    EXPECT_NE(o.status().message().find(c.names), absl::string_view::npos)
        << c.conf << ": " << o.status();
  }
}

}  // namespace
}  // namespace gpualloc
