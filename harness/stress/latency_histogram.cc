#include "harness/stress/latency_histogram.h"

#include <algorithm>
#include <bit>

namespace gpualloc::harness {

int LatencyHistogram::IndexOf(std::uint64_t ns) {
  if (ns < kSub) return static_cast<int>(ns);
  const int exponent = 63 - std::countl_zero(ns);  // >= 4
  const int shift = exponent - 4;
  const int sub = static_cast<int>((ns >> shift) & (kSub - 1));
  return std::min(kBuckets - 1, (exponent - 3) * kSub + sub);
}

std::uint64_t LatencyHistogram::UpperBound(int index) {
  if (index < kSub) return static_cast<std::uint64_t>(index);
  const int exponent = index / kSub + 3;
  const int sub = index % kSub;
  const int shift = exponent - 4;
  return ((static_cast<std::uint64_t>(kSub + sub) + 1) << shift) - 1;
}

void LatencyHistogram::Record(std::uint64_t ns) {
  ++counts_[IndexOf(ns)];
  ++count_;
  max_ = std::max(max_, ns);
}

void LatencyHistogram::Merge(const LatencyHistogram& other) {
  for (int i = 0; i < kBuckets; ++i) counts_[i] += other.counts_[i];
  count_ += other.count_;
  max_ = std::max(max_, other.max_);
}

std::uint64_t LatencyHistogram::Percentile(double q) const {
  if (count_ == 0) return 0;
  const auto rank = static_cast<std::uint64_t>(q * static_cast<double>(count_ - 1)) + 1;
  std::uint64_t seen = 0;
  for (int i = 0; i < kBuckets; ++i) {
    seen += counts_[i];
    if (seen >= rank) return std::min(UpperBound(i), max_);
  }
  return max_;
}

std::vector<std::pair<std::uint64_t, std::uint64_t>> LatencyHistogram::Buckets() const {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> out;
  for (int i = 0; i < kBuckets; ++i) {
    if (counts_[i]) out.emplace_back(UpperBound(i), counts_[i]);
  }
  return out;
}

}  // namespace gpualloc::harness
