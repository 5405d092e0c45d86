// Fuzz target: the stress runner's configuration checks on arbitrary values.
// Validate() must accept or reject with a message naming a flag, never crash,
// and every configuration it accepts must be one ToFlags() can print.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>

#include "harness/stress/stress_config.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using gpualloc::harness::StressConfig;
  auto take = [&](auto* out) {
    std::memset(out, 0, sizeof *out);
    const std::size_t n = std::min(size, sizeof *out);
    if (n != 0) std::memcpy(out, data, n);  // data may be null when size is 0
    data += n;
    size -= n;
  };
  StressConfig c;
  std::uint8_t backend = 0, sizes = 0, reuse = 0;
  take(&backend);
  c.backend = backend % 4 == 0 ? "sim" : backend % 4 == 1 ? "cuda" : backend % 4 == 2 ? "hip" : "tpu";
  take(&c.devices);
  take(&c.device_capacity_mb);
  take(&c.threads);
  take(&c.streams_per_device);
  take(&c.duration_s);
  take(&c.ops);
  take(&sizes);
  c.sizes = static_cast<gpualloc::harness::SizeDistribution>(sizes % 3);
  take(&c.min_size);
  take(&c.max_size);
  take(&c.max_live_per_thread);
  take(&c.cross_thread_free_fraction);
  take(&c.cross_stream_free_fraction);
  take(&c.device_switch_fraction);
  take(&c.fault_rate);
  take(&reuse);
  c.cross_stream = static_cast<gpualloc::CrossStreamReuse>(reuse % 3);
  take(&c.seed);
  absl::Status st = c.Validate();
  if (!st.ok()) {
    if (st.message().substr(0, 2) != "--") {
      std::fprintf(stderr, "stress_flags_fuzz: message names no flag: %s\n", std::string(st.message()).c_str());
      std::abort();
    }
    return 0;
  }
  if (c.ToFlags().find("--seed=") == std::string::npos) std::abort();
  std::mt19937_64 rng(c.seed);
  gpualloc::harness::SizeSampler sampler(c);
  for (int i = 0; i < 64; ++i) {
    const std::size_t s = sampler.Next(rng);
    if (s < c.min_size || s > c.max_size) {
      std::fprintf(stderr, "stress_flags_fuzz: sampled %zu outside [%zu, %zu]\n", s, c.min_size, c.max_size);
      std::abort();
    }
  }
  return 0;
}
