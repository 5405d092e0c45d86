#include "harness/ops/ops.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace gpualloc::harness {
namespace {

constexpr const char* kNames[] = {"allocate",   "free",        "free_on_other_stream",
                                  "record_use", "sync_stream", "empty_cache",
                                  "set_limit",  "inject_fault", "bad_free",
                                  "pinned_allocate", "pinned_free", "switch_device",
                                  "copy",       "shared_view", "enqueue_work",
                                  "wait_event", "free_in_flight", "host_sync",
                                  "pinned_copy", "staging_readback", "keyed_reduce",
                                  "bridge_echo", "peer_copy"};
static_assert(sizeof(kNames) / sizeof(kNames[0]) == static_cast<int>(OpKind::kCount));

class ByteReader {
 public:
  ByteReader(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  bool empty() const { return pos_ >= size_; }
  std::uint8_t Byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  // 1 to 4 bytes: the top two bits of the first byte say how many follow.
  std::uint64_t Number() {
    const std::uint8_t first = Byte();
    const int extra = first >> 6;
    std::uint64_t v = first & 0x3F;
    for (int i = 0; i < extra; ++i) v = (v << 8) | Byte();
    return v;
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

}  // namespace

std::string Op::ToString() const {
  return absl::StrFormat("%s(%d, %d)", kNames[static_cast<int>(kind)], a, b);
}

std::string OpsToString(const std::vector<Op>& ops) {
  std::string out;
  for (const Op& op : ops) absl::StrAppend(&out, out.empty() ? "" : "; ", op.ToString());
  return out;
}

std::vector<Op> DecodeOps(const std::uint8_t* data, std::size_t size, std::size_t max_ops) {
  ByteReader in(data, size);
  std::vector<Op> ops;
  while (!in.empty() && ops.size() < max_ops) {
    Op op;
    op.kind = static_cast<OpKind>(in.Byte() % static_cast<int>(OpKind::kCount));
    op.a = in.Number();
    op.b = in.Byte();
    if (op.kind == OpKind::kAllocate) op.a = op.a * 61 + 1;  // spread sizes over 1 B .. ~64 MiB
    if (op.kind == OpKind::kPinnedAllocate) op.a = op.a % (4 << 20) + 1;
    if (op.kind == OpKind::kSharedView) op.a = op.a % (1 << 20) + 1;
    ops.push_back(op);
  }
  return ops;
}

}  // namespace gpualloc::harness
