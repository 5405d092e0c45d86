// Streams and events of the simulated device: workers that run enqueued work
// in order, events as positions in a stream, and the stream-order checker's
// clocks that follow them.
#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <new>
#include <system_error>

#include "allocator/backend/sim/sim_internal.h"
#include "allocator/common/status_macros.h"

namespace gpualloc {

using sim_internal::Hex;
using sim_internal::SimError;
using sim_internal::SimulateLatency;

std::vector<std::shared_ptr<SimStreamWorker>> SimBackend::WorkersOn(DeviceIndex device) const {
  std::vector<std::shared_ptr<SimStreamWorker>> workers;
  std::lock_guard<std::mutex> lock(mu_);
  // In handle order, not hash order, so a scheduled run waits on the same
  // streams in the same order every time.
  std::vector<std::uintptr_t> handles;
  for (auto& [handle, worker] : streams_) {
    if (device == kAllDevices || worker->device() == device) handles.push_back(handle);
  }
  std::sort(handles.begin(), handles.end());
  for (std::uintptr_t handle : handles) workers.push_back(streams_.at(handle));
  for (std::size_t d = 0; d < devices_.size(); ++d) {
    if ((device == kAllDevices || static_cast<DeviceIndex>(d) == device) &&
        devices_[d]->default_stream) {
      workers.push_back(devices_[d]->default_stream);
    }
  }
  return workers;
}

void SimBackend::DrainDevice(DeviceIndex device) {
  std::vector<std::shared_ptr<SimStreamWorker>> workers = WorkersOn(device);
  for (auto& worker : workers) worker->Drain();
  HostWaited(workers);
}

struct SimStreamGate::State {
  std::mutex mu;
  std::condition_variable cv;
  bool open = false;
};

void SimStreamGate::Open() {
  if (state_ == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->open = true;
  }
  state_->cv.notify_all();
}

absl::StatusOr<SimStreamGate> SimBackend::HoldStream(Stream stream) {
  if (options_.scheduler != nullptr) {
    return SimError(absl::StatusCode::kFailedPrecondition, "simErrorNotSupported",
                    "HoldStream under a deterministic schedule: the scheduler decides when "
                    "streams run");
  }
  GPUALLOC_ASSIGN_OR_RETURN(std::shared_ptr<SimStreamWorker> worker, WorkerFor(stream));
  SimStreamGate gate;
  gate.state_ = std::make_shared<SimStreamGate::State>();
  worker->Enqueue([state = gate.state_] {
    std::unique_lock<std::mutex> lock(state->mu);
    state->cv.wait(lock, [&] { return state->open; });
  });
  return gate;
}

absl::StatusOr<std::shared_ptr<SimStreamWorker>> SimBackend::NewWorker(Stream stream) {
  std::shared_ptr<SimStreamWorker> worker;
  try {
    worker = std::make_shared<SimStreamWorker>(stream.device, options_.scheduler);
  } catch (const std::system_error& e) {
    return SimError(absl::StatusCode::kResourceExhausted, "simErrorOutOfResources",
                    absl::StrFormat("cannot start the worker thread of a new stream on device %d "
                                    "(too many streams for this machine?): %s",
                                    stream.device, e.what()));
  } catch (const std::bad_alloc&) {
    return SimError(absl::StatusCode::kResourceExhausted, "simErrorOutOfResources",
                    absl::StrFormat("no host memory for a new stream on device %d",
                                    stream.device));
  }
  if (checker_) worker->set_checker_actor(checker_->ActorFor(stream));
  return worker;
}

absl::Status SimBackend::DeviceSynchronize(DeviceIndex device) {
  Count(BackendOp::kDeviceSynchronize);
  GPUALLOC_RETURN_IF_ERROR(CheckDevice(device));
  DrainDevice(device);
  SimulateLatency(options_.cost.synchronize_ns);
  return absl::OkStatus();
}


// --- streams and events ----------------------------------------------------------

absl::StatusOr<std::shared_ptr<SimStreamWorker>> SimBackend::WorkerFor(Stream stream) {
  GPUALLOC_RETURN_IF_ERROR(CheckDevice(stream.device));
  std::lock_guard<std::mutex> lock(mu_);
  if (stream.is_default()) {
    auto& worker = devices_[stream.device]->default_stream;
    if (!worker) {
      absl::StatusOr<std::shared_ptr<SimStreamWorker>> fresh = NewWorker(stream);
      if (!fresh.ok()) return fresh.status();
      worker = *std::move(fresh);
    }
    return worker;
  }
  auto it = streams_.find(stream.handle);
  if (it == streams_.end()) {
    if (checker_ && destroyed_streams_.contains(stream.handle)) checker_->ReportDestroyedStream(stream);
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidResourceHandle",
                    absl::StrFormat("stream %d does not exist (never created or destroyed)",
                                    stream.handle));
  }
  if (it->second->device() != stream.device) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidDevice",
                    absl::StrFormat("stream %d belongs to device %d, not %d", stream.handle,
                                    it->second->device(), stream.device));
  }
  return it->second;
}

absl::StatusOr<Stream> SimBackend::CreateStream(DeviceIndex device) {
  return CreateStreamWithPriority(device, 0);
}

absl::StatusOr<Stream> SimBackend::CreateStreamWithPriority(DeviceIndex device, int priority) {
  Count(BackendOp::kStreamCreate);
  GPUALLOC_RETURN_IF_ERROR(CheckDevice(device));
  const SimDeviceConfig& c = options_.devices[device];
  priority = std::clamp(priority, c.stream_priority_greatest, c.stream_priority_least);
  std::uintptr_t handle;
  {
    std::lock_guard<std::mutex> lock(mu_);
    handle = next_handle_++;  // never reused, so a stream's checker actor is its own
  }
  GPUALLOC_ASSIGN_OR_RETURN(std::shared_ptr<SimStreamWorker> worker,
                            NewWorker(Stream{handle, device}));
  std::lock_guard<std::mutex> lock(mu_);
  streams_.emplace(handle, std::move(worker));
  if (priority != 0) stream_priorities_.emplace(handle, priority);
  return Stream{handle, device};
}

absl::StatusOr<int> SimBackend::GetStreamPriority(Stream stream) {
  if (stream.is_default()) return 0;
  GPUALLOC_RETURN_IF_ERROR(WorkerFor(stream).status());
  std::lock_guard<std::mutex> lock(mu_);
  auto it = stream_priorities_.find(stream.handle);
  return it == stream_priorities_.end() ? 0 : it->second;
}

absl::Status SimBackend::DestroyStream(Stream stream) {
  Count(BackendOp::kStreamDestroy);
  if (stream.is_default()) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidResourceHandle",
                    "the default stream cannot be destroyed");
  }
  GPUALLOC_ASSIGN_OR_RETURN(std::shared_ptr<SimStreamWorker> worker, WorkerFor(stream));
  {
    std::lock_guard<std::mutex> lock(mu_);
    streams_.erase(stream.handle);
    stream_priorities_.erase(stream.handle);
    destroyed_streams_.insert(stream.handle);
  }
  worker->Drain();
  HostWaited({worker});
  return absl::OkStatus();
}

absl::Status SimBackend::SynchronizeStream(Stream stream) {
  Count(BackendOp::kStreamSynchronize);
  GPUALLOC_ASSIGN_OR_RETURN(std::shared_ptr<SimStreamWorker> worker, WorkerFor(stream));
  worker->Drain();
  HostWaited({worker});
  SimulateLatency(options_.cost.synchronize_ns);
  return absl::OkStatus();
}

absl::Status SimBackend::StreamWaitEvent(Stream stream, Event event) {
  Count(BackendOp::kStreamWaitEvent);
  GPUALLOC_ASSIGN_OR_RETURN(std::shared_ptr<SimStreamWorker> worker, WorkerFor(stream));
  std::shared_ptr<SimStreamWorker> waited;
  std::uint64_t seq = 0;
  VectorClock clock;
  GPUALLOC_RETURN_IF_ERROR(RecordedPosition(event, &waited, &seq, &clock));
  if (waited && waited != worker) {
    worker->Enqueue([waited, seq] { waited->WaitFor(seq); });
  }
  if (checker_ && waited) checker_->Wait(ActorOf(*worker), clock);
  return absl::OkStatus();
}

namespace {
absl::Status NoSuchEvent(Event event) {
  return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidResourceHandle",
                  absl::StrFormat("event %d does not exist (never created or destroyed)",
                                  event.handle));
}
}  // namespace

absl::Status SimBackend::RecordedPosition(Event event, std::shared_ptr<SimStreamWorker>* worker,
                                          std::uint64_t* seq, VectorClock* clock) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = events_.find(event.handle);
  if (it == events_.end()) {
    return NoSuchEvent(event);
  }
  *worker = it->second->worker;
  *seq = it->second->seq;
  if (clock != nullptr) *clock = it->second->clock;
  return absl::OkStatus();
}

absl::StatusOr<Event> SimBackend::CreateEvent(DeviceIndex device) {
  Count(BackendOp::kEventCreate);
  GPUALLOC_RETURN_IF_ERROR(CheckDevice(device));
  std::lock_guard<std::mutex> lock(mu_);
  const std::uintptr_t handle = next_handle_++;
  events_.emplace(handle, std::make_unique<EventState>(EventState{device, nullptr, 0, {}}));
  return Event{handle, device};
}

absl::Status SimBackend::RecordEvent(Event event, Stream stream) {
  Count(BackendOp::kEventRecord);
  SimulateLatency(options_.cost.event_ns);
  GPUALLOC_ASSIGN_OR_RETURN(std::shared_ptr<SimStreamWorker> worker, WorkerFor(stream));
  std::lock_guard<std::mutex> lock(mu_);
  auto it = events_.find(event.handle);
  if (it == events_.end()) {
    return NoSuchEvent(event);
  }
  if (it->second->device != stream.device) {
    return SimError(absl::StatusCode::kInvalidArgument, "simErrorInvalidResourceHandle",
                    absl::StrFormat("event of device %d recorded on a stream of device %d",
                                    it->second->device, stream.device));
  }
  it->second->worker = worker;
  it->second->seq = worker->last_enqueued();
  if (checker_) it->second->clock = checker_->Capture(ActorOf(*worker));
  return absl::OkStatus();
}

absl::StatusOr<bool> SimBackend::QueryEvent(Event event) {
  Count(BackendOp::kEventQuery);
  std::shared_ptr<SimStreamWorker> worker;
  std::uint64_t seq = 0;
  VectorClock clock;
  GPUALLOC_RETURN_IF_ERROR(RecordedPosition(event, &worker, &seq, &clock));
  if (worker == nullptr) return true;
  if (!worker->Reached(seq)) return false;
  if (checker_) checker_->HostJoin(clock);  // the host saw it complete
  return true;
}

absl::Status SimBackend::SynchronizeEvent(Event event) {
  Count(BackendOp::kEventSynchronize);
  std::shared_ptr<SimStreamWorker> worker;
  std::uint64_t seq = 0;
  VectorClock clock;
  GPUALLOC_RETURN_IF_ERROR(RecordedPosition(event, &worker, &seq, &clock));
  if (worker) worker->WaitFor(seq);
  if (checker_ && worker) checker_->HostJoin(clock);
  return absl::OkStatus();
}

absl::Status SimBackend::DestroyEvent(Event event) {
  Count(BackendOp::kEventDestroy);
  std::unique_ptr<EventState> doomed;  // destroyed outside the lock
  std::lock_guard<std::mutex> lock(mu_);
  auto it = events_.find(event.handle);
  if (it == events_.end()) {
    return NoSuchEvent(event);
  }
  doomed = std::move(it->second);
  events_.erase(it);
  return absl::OkStatus();
}


}  // namespace gpualloc
