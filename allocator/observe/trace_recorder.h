// TraceRecorder: an adaptor that writes every allocate and free passing
// through it to a trace file (trace_format.h), for //harness:replay to run
// against any allocator stack later.
//
// Records are buffered in memory and appended to the file when the buffer
// passes 1 MiB, on Flush(), and at destruction. Thread-safe.
#ifndef GPUALLOC_ALLOCATOR_OBSERVE_TRACE_RECORDER_H_
#define GPUALLOC_ALLOCATOR_OBSERVE_TRACE_RECORDER_H_

#include <chrono>
#include <cstdio>
#include <memory>
#include <memory_resource>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>

#include "allocator/common/mutex.h"
#include "allocator/observe/trace_format.h"
#include "allocator/resource/memory_resource.h"

namespace gpualloc {

class TraceRecorder final : public MemoryResource {
 public:
  // Creates (truncates) `path` and writes the header; the file's error if not.
  // The tables of live ids and threads sit in `metadata` (null: new/delete;
  // it must outlive the recorder). If a record cannot be made, Allocate
  // fails with ResourceExhausted and gives the upstream allocation back: no
  // allocation escapes that the trace does not show.
  static absl::StatusOr<std::unique_ptr<TraceRecorder>> Create(
      std::shared_ptr<MemoryResource> upstream, const std::string& path,
      std::pmr::memory_resource* metadata = nullptr);
  ~TraceRecorder() override;

  absl::string_view name() const override { return "trace recorder"; }
  DeviceIndex device() const override { return upstream_->device(); }
  std::size_t alignment() const override { return upstream_->alignment(); }
  MemoryStats stats() const override { return upstream_->stats(); }

  absl::Status Flush();
  std::uint64_t events_recorded() const;

 private:
  TraceRecorder(std::shared_ptr<MemoryResource> upstream, std::FILE* file,
                std::pmr::memory_resource* metadata)
      : upstream_(std::move(upstream)),
        file_(file),
        start_(std::chrono::steady_clock::now()),
        ids_(metadata),
        threads_(metadata) {}
  absl::StatusOr<Allocation> DoAllocate(std::size_t bytes, Stream stream) override;
  absl::Status DoDeallocate(const Allocation& allocation, Stream stream) override;
  void RecordLocked(TraceEvent::Action action, const Allocation& a, std::uint64_t id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status FlushLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::shared_ptr<MemoryResource> upstream_;
  std::FILE* const file_;
  const std::chrono::steady_clock::time_point start_;
  mutable Mutex mu_;
  std::string buffer_ ABSL_GUARDED_BY(mu_);
  // Node-based standard tables: a failed insert changes nothing (an Abseil
  // flat table would be left corrupt), and a failed free's entry goes back
  // as the node it left as. ids_: live allocation -> id.
  std::pmr::unordered_map<void*, std::uint64_t> ids_ ABSL_GUARDED_BY(mu_);
  std::pmr::unordered_map<std::thread::id, std::uint32_t> threads_ ABSL_GUARDED_BY(mu_);
  std::uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
  std::uint64_t events_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_OBSERVE_TRACE_RECORDER_H_
