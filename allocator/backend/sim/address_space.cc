#include "allocator/backend/sim/address_space.h"

#include <iterator>

namespace gpualloc {

SimAddressSpace::SimAddressSpace(std::size_t capacity) : capacity_(capacity), free_bytes_(0) {
  if (capacity > 0) Insert(0, capacity);
}

void SimAddressSpace::Insert(std::size_t offset, std::size_t bytes) {
  by_offset_.emplace(offset, bytes);
  by_size_.emplace(bytes, offset);
  free_bytes_ += bytes;
}

void SimAddressSpace::Erase(std::map<std::size_t, std::size_t>::iterator it) {
  by_size_.erase({it->second, it->first});
  free_bytes_ -= it->second;
  by_offset_.erase(it);
}

std::optional<std::size_t> SimAddressSpace::Allocate(std::size_t bytes) {
  if (bytes == 0) return std::nullopt;
  auto fit = by_size_.lower_bound({bytes, 0});
  if (fit == by_size_.end()) return std::nullopt;
  const auto [size, offset] = *fit;
  Erase(by_offset_.find(offset));
  if (size > bytes) Insert(offset + bytes, size - bytes);
  return offset;
}

void SimAddressSpace::Release(std::size_t offset, std::size_t bytes) {
  std::size_t start = offset;
  std::size_t size = bytes;
  auto next = by_offset_.lower_bound(offset);
  if (next != by_offset_.end() && next->first == offset + bytes) {
    size += next->second;
    auto after = std::next(next);
    Erase(next);
    next = after;
  }
  if (next != by_offset_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == offset) {
      start = prev->first;
      size += prev->second;
      Erase(prev);
    }
  }
  Insert(start, size);
}

std::size_t SimAddressSpace::largest_free_range() const {
  return by_size_.empty() ? 0 : by_size_.rbegin()->first;
}

}  // namespace gpualloc
