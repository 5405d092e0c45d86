// Log-bucketed latency histogram (16 sub-buckets per power of two, so
// percentiles are within ~4%): fixed size, no allocation while recording,
// mergeable across threads.
#ifndef GPUALLOC_HARNESS_STRESS_LATENCY_HISTOGRAM_H_
#define GPUALLOC_HARNESS_STRESS_LATENCY_HISTOGRAM_H_

#include <array>
#include <cstdint>
#include <vector>

namespace gpualloc::harness {

class LatencyHistogram {
 public:
  void Record(std::uint64_t ns);
  void Merge(const LatencyHistogram& other);
  std::uint64_t count() const { return count_; }
  std::uint64_t max() const { return max_; }
  // The latency below which a fraction `q` (0..1) of samples fall; 0 if empty.
  std::uint64_t Percentile(double q) const;
  // (upper bound ns, count) of every non-empty bucket, for plots.
  std::vector<std::pair<std::uint64_t, std::uint64_t>> Buckets() const;

 private:
  static constexpr int kSub = 16;
  static constexpr int kBuckets = 64 * kSub;
  static int IndexOf(std::uint64_t ns);
  static std::uint64_t UpperBound(int index);

  std::array<std::uint64_t, kBuckets> counts_{};
  std::uint64_t count_ = 0;
  std::uint64_t max_ = 0;
};

}  // namespace gpualloc::harness

#endif  // GPUALLOC_HARNESS_STRESS_LATENCY_HISTOGRAM_H_
