#include "allocator/adapters/alloc_conf.h"

#include <set>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace gpualloc {
namespace {

absl::Status Bad(absl::string_view pair, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("GPUALLOC_CONF: '", pair, "': ", why));
}

}  // namespace

absl::StatusOr<CachingOptions> ApplyAllocConf(absl::string_view conf, CachingOptions base) {
  CachingOptions o = base;
  std::set<std::string> seen;
  for (absl::string_view raw : absl::StrSplit(conf, ',', absl::SkipWhitespace())) {
    const absl::string_view pair = absl::StripAsciiWhitespace(raw);
    const std::size_t colon = pair.find(':');
    if (colon == absl::string_view::npos) return Bad(pair, "expected key:value");
    const std::string key(absl::StripAsciiWhitespace(pair.substr(0, colon)));
    const absl::string_view value = absl::StripAsciiWhitespace(pair.substr(colon + 1));
    if (!seen.insert(key).second) return Bad(pair, "given twice");
    if (key == "expandable_segments") {
      if (value == "True" || value == "true" || value == "1") {
        o.expandable_segments = true;
      } else if (value == "False" || value == "false" || value == "0") {
        o.expandable_segments = false;
      } else {
        return Bad(pair, "expected True or False");
      }
    } else if (key == "cross_stream") {
      if (!ParseCrossStreamReuse(value, &o.cross_stream)) {
        return Bad(pair, "expected none, opportunistic or follow");
      }
    } else if (key == "limit_mb" || key == "max_split_size_mb") {
      std::uint64_t mb = 0;
      if (!absl::SimpleAtoi(value, &mb) || mb == 0 || mb > (std::uint64_t{1} << 44)) {
        return Bad(pair, "expected a whole number of MiB, at least 1");
      }
      (key == "limit_mb" ? o.reserved_limit : o.max_split_bytes) = mb << 20;
    } else if (key == "gc_threshold") {
      double t = 0;
      if (!absl::SimpleAtod(value, &t) || !(t > 0 && t < 1)) {
        return Bad(pair, "expected a number between 0 and 1 (exclusive)");
      }
      o.gc_threshold = t;
    } else {
      return Bad(pair,
                 "unknown key (known: expandable_segments, cross_stream, limit_mb, "
                 "gc_threshold, max_split_size_mb)");
    }
  }
  if (absl::Status valid = o.Validate(); !valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("GPUALLOC_CONF: ", valid.message()));
  }
  return o;
}

}  // namespace gpualloc
