#include "harness/trace/trace_generator.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>

namespace gpualloc::harness {
namespace {

// Emits events to a sink as they happen; holds only the live allocations of
// the workload, never the trace.
class Builder {
 public:
  Builder(std::uint64_t seed, const std::function<bool(const TraceEvent&)>& sink)
      : rng_(seed), sink_(sink) {}
  std::uint64_t Allocate(std::uint64_t size) {
    TraceEvent e;
    e.time_ns = (time_ += 1000);
    e.action = TraceEvent::Action::kAllocate;
    e.size = std::max<std::uint64_t>(size, 1);
    e.id = next_id_++;
    Emit(e);
    return e.id;
  }
  void Free(std::uint64_t id, std::uint64_t size) {
    TraceEvent e;
    e.time_ns = (time_ += 1000);
    e.action = TraceEvent::Action::kFree;
    e.size = size;
    e.id = id;
    Emit(e);
  }
  std::mt19937_64& rng() { return rng_; }
  std::size_t emitted() const { return emitted_; }
  // The sink refused an event (e.g. a write failed): stop generating.
  bool stopped() const { return stopped_; }

 private:
  void Emit(const TraceEvent& e) {
    if (stopped_) return;
    ++emitted_;
    if (!sink_(e)) stopped_ = true;
  }
  std::mt19937_64 rng_;
  const std::function<bool(const TraceEvent&)>& sink_;
  std::size_t emitted_ = 0;
  bool stopped_ = false;
  std::uint64_t next_id_ = 0;
  std::uint64_t time_ = 0;
};

std::uint64_t Round(double bytes, std::uint64_t unit) {
  return std::max<std::uint64_t>(unit, static_cast<std::uint64_t>(bytes / unit) * unit);
}

void Training(Builder& b, std::size_t target) {
  constexpr int kLayers = 24;
  std::uniform_real_distribution<double> jitter(0.8, 1.2);
  std::vector<std::pair<std::uint64_t, std::uint64_t>> params;  // (id, size), live throughout
  for (int l = 0; l < kLayers; ++l) {
    const std::uint64_t weight = Round((4 << 20) * jitter(b.rng()), 4096);
    params.emplace_back(b.Allocate(weight), weight);             // weights
    params.emplace_back(b.Allocate(weight * 2), weight * 2);     // optimizer moments
  }
  while (b.emitted() < target && !b.stopped()) {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> activations;
    for (int l = 0; l < kLayers; ++l) {  // forward
      const std::uint64_t act = Round((1 << 20) * (1 + l % 4) * jitter(b.rng()), 512);
      activations.emplace_back(b.Allocate(act), act);
      const std::uint64_t ws = Round((256 << 10) * jitter(b.rng()), 512);
      const std::uint64_t tmp = b.Allocate(ws);  // workspace, freed at once
      b.Free(tmp, ws);
    }
    for (int l = kLayers - 1; l >= 0; --l) {  // backward
      const std::uint64_t grad = params[2 * l].second;
      const std::uint64_t g = b.Allocate(grad);
      b.Free(activations[l].first, activations[l].second);
      b.Free(g, grad);
    }
  }
  for (const auto& [id, size] : params) b.Free(id, size);
}

void Serving(Builder& b, std::size_t target) {
  struct Request {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> kv;  // pages
    int remaining;
  };
  std::vector<Request> active;
  std::exponential_distribution<double> lifetime(1.0 / 64);  // tokens per request
  std::uniform_int_distribution<int> arrivals(0, 2);
  constexpr std::uint64_t kPage = 2 << 20;  // KV-cache pages
  while (b.emitted() < target && !b.stopped()) {
    for (int i = arrivals(b.rng()); i > 0 && active.size() < 48; --i) {
      active.push_back(Request{{}, 1 + static_cast<int>(lifetime(b.rng()))});
    }
    for (Request& r : active) {  // one generated token each
      if (r.kv.empty() || b.rng()() % 16 == 0) r.kv.emplace_back(b.Allocate(kPage), kPage);
      const std::uint64_t act = Round((64 << 10) * (1 + b.rng()() % 8), 512);
      const std::uint64_t a = b.Allocate(act);
      b.Free(a, act);
      --r.remaining;
    }
    for (auto it = active.begin(); it != active.end();) {
      if (it->remaining <= 0) {
        for (const auto& [id, size] : it->kv) b.Free(id, size);
        it = active.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (const Request& r : active) {
    for (const auto& [id, size] : r.kv) b.Free(id, size);
  }
}

}  // namespace

bool ParseTraceKind(absl::string_view name, TraceKind* kind) {
  if (name == "training") {
    *kind = TraceKind::kTraining;
  } else if (name == "serving") {
    *kind = TraceKind::kServing;
  } else {
    return false;
  }
  return true;
}

bool GenerateTraceTo(TraceKind kind, std::uint64_t seed, std::size_t events,
                     const std::function<bool(const TraceEvent&)>& sink) {
  Builder b(seed, sink);
  if (kind == TraceKind::kTraining) {
    Training(b, events);
  } else {
    Serving(b, events);
  }
  return !b.stopped();
}

std::vector<TraceEvent> GenerateTrace(TraceKind kind, std::uint64_t seed, std::size_t events) {
  std::vector<TraceEvent> out;
  GenerateTraceTo(kind, seed, events, [&](const TraceEvent& e) {
    out.push_back(e);
    return true;
  });
  return out;
}

}  // namespace gpualloc::harness
