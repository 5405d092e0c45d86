#include "allocator/transfer/event_pool.h"

#include <cstdio>
#include <string>

#include "allocator/common/exception_boundary.h"
#include "allocator/common/status_macros.h"

namespace gpualloc {

EventPool::~EventPool() {
  MutexLock lock(mu_);
  for (Event e : spares_) {
    absl::Status st = CallAtBoundary("event destroy", [&] { return backend_->DestroyEvent(e); });
    if (!st.ok()) {
      std::fprintf(stderr, "gpualloc: EventPool (device %d) could not destroy an event: %s\n",
                   device_, std::string(st.message()).c_str());
    }
  }
}

absl::StatusOr<Event> EventPool::Acquire() {
  {
    MutexLock lock(mu_);
    if (!spares_.empty()) {
      Event e = spares_.back();
      spares_.pop_back();
      return e;
    }
  }
  return CallAtBoundary("event create", [&] { return backend_->CreateEvent(device_); });
}

void EventPool::Recycle(Event event) noexcept {
  absl::Status kept = CallAtBoundary("event pool: recycle", [&] {
    MutexLock lock(mu_);
    spares_.push_back(event);
    return absl::OkStatus();
  });
  if (!kept.ok()) {
    CallAtBoundary("event destroy", [&] { return backend_->DestroyEvent(event); }).IgnoreError();
  }
}

absl::Status EventPool::Order(Stream from, Stream to) {
  GPUALLOC_ASSIGN_OR_RETURN(Event e, Acquire());
  absl::Status st = CallAtBoundary("event record", [&] { return backend_->RecordEvent(e, from); });
  if (st.ok()) {
    st = CallAtBoundary("stream wait", [&] { return backend_->StreamWaitEvent(to, e); });
  }
  Recycle(e);  // a stream wait holds no reference to the event: reusable at once
  return st;
}

std::size_t EventPool::spares() const {
  MutexLock lock(mu_);
  return spares_.size();
}

}  // namespace gpualloc
