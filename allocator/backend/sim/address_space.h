// The address space of one simulated device: ranges are handed out best-fit
// and returned ranges coalesce, so a device can be out of memory while it
// still has enough free bytes in total (fragmentation), as a real one can.
//
// Not thread-safe: SimBackend guards it with its own mutex.
#ifndef GPUALLOC_ALLOCATOR_BACKEND_SIM_ADDRESS_SPACE_H_
#define GPUALLOC_ALLOCATOR_BACKEND_SIM_ADDRESS_SPACE_H_

#include <cstddef>
#include <map>
#include <optional>
#include <set>
#include <utility>

namespace gpualloc {

class SimAddressSpace {
 public:
  explicit SimAddressSpace(std::size_t capacity);

  // Reserves `bytes` (> 0) and returns the offset of the range, or nullopt
  // when no free range is large enough. O(log n).
  std::optional<std::size_t> Allocate(std::size_t bytes);
  // Returns a range obtained from Allocate. O(log n).
  void Release(std::size_t offset, std::size_t bytes);

  std::size_t capacity() const { return capacity_; }
  std::size_t free_bytes() const { return free_bytes_; }
  std::size_t largest_free_range() const;

 private:
  void Insert(std::size_t offset, std::size_t bytes);
  void Erase(std::map<std::size_t, std::size_t>::iterator it);

  std::size_t capacity_;
  std::size_t free_bytes_;
  std::map<std::size_t, std::size_t> by_offset_;              // offset -> size
  std::set<std::pair<std::size_t, std::size_t>> by_size_;     // (size, offset)
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_BACKEND_SIM_ADDRESS_SPACE_H_
