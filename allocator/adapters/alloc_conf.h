// GPUALLOC_CONF: the plug-in's configuration, in the style of PyTorch's
// PYTORCH_CUDA_ALLOC_CONF: comma-separated key:value pairs, e.g.
//
//   GPUALLOC_CONF=expandable_segments:True,cross_stream:follow,limit_mb:40960,gc_threshold:0.8
//
// Keys:
//   expandable_segments  True|False            grow segments in place (virtual memory)
//   cross_stream         none|opportunistic|follow   reuse across streams (see CachingOptions)
//   limit_mb             integer > 0           cap on reserved bytes per device, MiB
//   gc_threshold         number in (0, 1)      reclaim cached blocks above this share of the limit
//   max_split_size_mb    integer > 0           blocks above this are never split, MiB
//
// Anything else, a value of the wrong form, or a key given twice is an error
// naming what was wrong: a typo must never be silently ignored.
#ifndef GPUALLOC_ALLOCATOR_ADAPTERS_ALLOC_CONF_H_
#define GPUALLOC_ALLOCATOR_ADAPTERS_ALLOC_CONF_H_

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "allocator/caching/caching_options.h"

namespace gpualloc {

// `base` with the settings of `conf` applied; InvalidArgument naming the
// offending pair otherwise. An empty `conf` returns `base`.
absl::StatusOr<CachingOptions> ApplyAllocConf(absl::string_view conf, CachingOptions base);

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_ADAPTERS_ALLOC_CONF_H_
