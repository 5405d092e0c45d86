#include "allocator/observe/trace_recorder.h"

#include <cerrno>
#include <cstring>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "allocator/common/pmr_object.h"

namespace gpualloc {
namespace {

constexpr char kMagic[8] = {'G', 'P', 'U', 'T', 'R', 'A', 'C', 'E'};

template <typename T>
void Put(T v, std::string* out) {
  for (std::size_t i = 0; i < sizeof(T); ++i) {
    out->push_back(static_cast<char>((static_cast<std::uint64_t>(v) >> (8 * i)) & 0xFF));
  }
}

template <typename T>
T Get(const unsigned char* p) {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return static_cast<T>(v);
}

}  // namespace

std::string EncodeTraceHeader() {
  std::string out(kMagic, sizeof kMagic);
  Put<std::uint32_t>(1, &out);
  Put<std::uint32_t>(kTraceRecordBytes, &out);
  return out;
}

void AppendTraceRecord(const TraceEvent& e, std::string* out) {
  Put<std::uint64_t>(e.time_ns, out);
  Put<std::uint32_t>(e.thread, out);
  Put<std::uint8_t>(static_cast<std::uint8_t>(e.action), out);
  out->append(3, '\0');
  Put<std::uint32_t>(static_cast<std::uint32_t>(e.device), out);
  Put<std::uint32_t>(0, out);
  Put<std::uint64_t>(e.stream, out);
  Put<std::uint64_t>(e.size, out);
  Put<std::uint64_t>(e.id, out);
}

absl::StatusOr<std::vector<TraceEvent>> DecodeTrace(absl::string_view bytes) {
  if (bytes.size() < kTraceHeaderBytes || std::memcmp(bytes.data(), kMagic, sizeof kMagic) != 0) {
    return absl::InvalidArgumentError("trace: offset 0: not a GPUTRACE file (bad magic or too short)");
  }
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const auto version = Get<std::uint32_t>(p + 8);
  const auto record = Get<std::uint32_t>(p + 12);
  if (version != 1 || record != kTraceRecordBytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "trace: offset 8: version %d with %d-byte records is not supported (version 1, 48)",
        version, record));
  }
  const std::size_t body = bytes.size() - kTraceHeaderBytes;
  if (body % kTraceRecordBytes != 0) {
    const std::size_t last = kTraceHeaderBytes + body / kTraceRecordBytes * kTraceRecordBytes;
    return absl::InvalidArgumentError(absl::StrFormat(
        "trace: offset %d: truncated record (%d of %d bytes)", last, bytes.size() - last,
        kTraceRecordBytes));
  }
  std::vector<TraceEvent> events;
  events.reserve(body / kTraceRecordBytes);
  for (std::size_t off = kTraceHeaderBytes; off < bytes.size(); off += kTraceRecordBytes) {
    const unsigned char* r = p + off;
    TraceEvent e;
    e.time_ns = Get<std::uint64_t>(r);
    e.thread = Get<std::uint32_t>(r + 8);
    const auto action = Get<std::uint8_t>(r + 12);
    if (action != 1 && action != 2) {
      return absl::InvalidArgumentError(
          absl::StrFormat("trace: offset %d: action %d is neither allocate (1) nor free (2)", off, action));
    }
    e.action = static_cast<TraceEvent::Action>(action);
    e.device = static_cast<std::int32_t>(Get<std::uint32_t>(r + 16));
    e.stream = Get<std::uint64_t>(r + 24);
    e.size = Get<std::uint64_t>(r + 32);
    e.id = Get<std::uint64_t>(r + 40);
    if (e.device < 0 || e.device > 1024) {
      return absl::InvalidArgumentError(absl::StrFormat("trace: offset %d: device %d is out of range", off, e.device));
    }
    if (e.action == TraceEvent::Action::kAllocate && e.size == 0) {
      return absl::InvalidArgumentError(absl::StrFormat("trace: offset %d: allocation of 0 bytes", off));
    }
    events.push_back(e);
  }
  return events;
}

absl::StatusOr<std::vector<TraceEvent>> ParseRmmCsv(absl::string_view text) {
  std::vector<TraceEvent> events;
  absl::flat_hash_map<std::uint64_t, std::uint64_t> live;  // pointer -> id
  absl::flat_hash_map<std::string, std::uint32_t> threads;
  std::uint64_t next_id = 0;
  int line_number = 0;
  bool header = false;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    auto bad = [&](const std::string& why) {
      return absl::InvalidArgumentError(absl::StrFormat("RMM CSV: line %d: %s", line_number, why));
    };
    if (!header) {
      if (line != "Thread,Time,Action,Pointer,Size,Stream") {
        return bad("expected the header Thread,Time,Action,Pointer,Size,Stream");
      }
      header = true;
      continue;
    }
    std::vector<absl::string_view> f = absl::StrSplit(line, ',');
    if (f.size() != 6) return bad(absl::StrFormat("%d fields, expected 6", f.size()));
    TraceEvent e;
    auto [it, inserted] = threads.emplace(std::string(f[0]), threads.size());
    e.thread = it->second;
    std::vector<absl::string_view> t = absl::StrSplit(f[1], ':');
    std::uint64_t h = 0, m = 0, s = 0, us = 0;
    if (t.size() != 4 || !absl::SimpleAtoi(t[0], &h) || !absl::SimpleAtoi(t[1], &m) ||
        !absl::SimpleAtoi(t[2], &s) || !absl::SimpleAtoi(t[3], &us)) {
      return bad(absl::StrFormat("time '%s' is not HH:MM:SS:microseconds", f[1]));
    }
    e.time_ns = (((h * 60 + m) * 60 + s) * 1'000'000 + us) * 1000;
    std::uint64_t pointer = 0, size = 0, stream = 0;
    if (!absl::SimpleHexAtoi(f[3], &pointer)) return bad(absl::StrFormat("pointer '%s' is not hex", f[3]));
    if (!absl::SimpleAtoi(f[4], &size)) return bad(absl::StrFormat("size '%s' is not a number", f[4]));
    if (!absl::SimpleHexAtoi(f[5], &stream) && !absl::SimpleAtoi(f[5], &stream)) {
      return bad(absl::StrFormat("stream '%s' is not a number", f[5]));
    }
    e.stream = stream;
    e.size = size;
    if (f[2] == "allocate") {
      if (size == 0) return bad("allocation of 0 bytes");
      if (live.contains(pointer)) return bad(absl::StrFormat("%#x allocated again while live", pointer));
      e.action = TraceEvent::Action::kAllocate;
      e.id = next_id++;
      live[pointer] = e.id;
    } else if (f[2] == "free") {
      auto found = live.find(pointer);
      if (found == live.end()) return bad(absl::StrFormat("free of %#x, which is not live", pointer));
      e.action = TraceEvent::Action::kFree;
      e.id = found->second;
      live.erase(found);
    } else if (f[2] == "allocate failure") {
      continue;  // nothing was handed out
    } else {
      return bad(absl::StrFormat("unknown action '%s'", f[2]));
    }
    events.push_back(e);
  }
  if (!header) return absl::InvalidArgumentError("RMM CSV: line 1: empty file");
  return events;
}

absl::StatusOr<std::vector<TraceEvent>> ParseTrace(absl::string_view contents) {
  if (contents.empty()) {
    return absl::InvalidArgumentError(
        "empty trace (0 bytes): neither our binary format nor RMM CSV");
  }
  if (contents.size() >= sizeof kMagic && std::memcmp(contents.data(), kMagic, sizeof kMagic) == 0) {
    return DecodeTrace(contents);
  }
  return ParseRmmCsv(contents);
}

absl::Status ValidateTrace(const std::vector<TraceEvent>& events) {
  absl::flat_hash_set<std::uint64_t> live;
  for (std::size_t i = 0; i < events.size(); ++i) {
    const TraceEvent& e = events[i];
    if (e.action == TraceEvent::Action::kAllocate) {
      if (!live.insert(e.id).second) {
        return absl::InvalidArgumentError(absl::StrFormat("trace: record %d: id %d allocated twice", i, e.id));
      }
    } else if (live.erase(e.id) == 0) {
      return absl::InvalidArgumentError(absl::StrFormat("trace: record %d: free of id %d, which is not live", i, e.id));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<TraceRecorder>> TraceRecorder::Create(
    std::shared_ptr<MemoryResource> upstream, const std::string& path,
    std::pmr::memory_resource* metadata) {
  std::FILE* file = std::fopen(path.c_str(), "wb");
  if (file == nullptr) {
    return absl::InvalidArgumentError(absl::StrFormat("trace recorder: cannot create %s: %s", path, std::strerror(errno)));
  }
  const std::string header = EncodeTraceHeader();
  if (std::fwrite(header.data(), 1, header.size(), file) != header.size()) {
    std::fclose(file);
    return absl::InternalError(absl::StrFormat("trace recorder: cannot write %s", path));
  }
  return std::unique_ptr<TraceRecorder>(new TraceRecorder(
      std::move(upstream), file, MetadataResourceOr(metadata)));
}

TraceRecorder::~TraceRecorder() {
  MutexLock lock(mu_);
  FlushLocked().IgnoreError();
  std::fclose(file_);
}

void TraceRecorder::RecordLocked(TraceEvent::Action action, const Allocation& a, std::uint64_t id) {
  TraceEvent e;
  e.time_ns = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                             std::chrono::steady_clock::now() - start_)
                                             .count());
  // try_emplace: no node is made (and nothing can throw) for a known thread.
  e.thread = threads_.try_emplace(std::this_thread::get_id(), threads_.size()).first->second;
  e.action = action;
  e.device = a.device();
  e.stream = a.stream.handle;
  e.size = a.bytes;
  e.id = id;
  AppendTraceRecord(e, &buffer_);
  ++events_;
  if (buffer_.size() >= (1u << 20)) FlushLocked().IgnoreError();
}

absl::StatusOr<Allocation> TraceRecorder::DoAllocate(std::size_t bytes, Stream stream) {
  absl::StatusOr<Allocation> a = upstream_->Allocate(bytes, stream);
  if (!a.ok()) return a;
  MutexLock lock(mu_);
  const std::uint64_t id = next_id_;
  try {
    ids_.emplace(a->ptr, id);  // strong: unchanged if it throws
    try {
      RecordLocked(TraceEvent::Action::kAllocate, *a, id);
    } catch (...) {
      ids_.erase(a->ptr);
      throw;
    }
  } catch (...) {
    upstream_->Deallocate(*a).IgnoreError();  // an allocation the trace lacks must not escape
    throw;
  }
  ++next_id_;
  return a;
}

absl::Status TraceRecorder::DoDeallocate(const Allocation& allocation, Stream stream) {
  decltype(ids_)::node_type entry;
  {
    MutexLock lock(mu_);
    auto it = ids_.find(allocation.ptr);
    if (it == ids_.end()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "trace recorder: %p was not allocated through it or was already freed", allocation.ptr));
    }
    // Recorded before the upstream frees it: the free is ordered before any
    // reuse of the pointer by another thread.
    RecordLocked(TraceEvent::Action::kFree, allocation, it->second);
    entry = ids_.extract(it);
  }
  const std::uint64_t id = entry.mapped();
  absl::Status st = upstream_->Deallocate(allocation, stream);
  if (!st.ok()) {
    // Still live: say so in the trace too (a replay frees and re-allocates,
    // which is the same for every allocator).
    MutexLock lock(mu_);
    ids_.insert(std::move(entry));  // back as the node it left as: no allocation
    RecordLocked(TraceEvent::Action::kAllocate, allocation, id);
  }
  return st;
}

absl::Status TraceRecorder::FlushLocked() {
  if (buffer_.empty()) return absl::OkStatus();
  const bool ok = std::fwrite(buffer_.data(), 1, buffer_.size(), file_) == buffer_.size() &&
                  std::fflush(file_) == 0;
  buffer_.clear();
  return ok ? absl::OkStatus() : absl::InternalError("trace recorder: write failed");
}

absl::Status TraceRecorder::Flush() {
  MutexLock lock(mu_);
  return FlushLocked();
}

std::uint64_t TraceRecorder::events_recorded() const {
  MutexLock lock(mu_);
  return events_;
}

}  // namespace gpualloc
