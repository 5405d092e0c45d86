// What to inject, where and when: the vocabulary of FailpointBackend.
#ifndef GPUALLOC_ALLOCATOR_BACKEND_FAILPOINTS_FAULT_RULE_H_
#define GPUALLOC_ALLOCATOR_BACKEND_FAILPOINTS_FAULT_RULE_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "allocator/backend/types.h"

namespace gpualloc {

// The arguments of an intercepted call, for predicates and messages.
struct CallInfo {
  BackendOp op;
  DeviceIndex device = 0;     // the device the call acts on, if any
  std::size_t bytes = 0;      // the size argument, if any
  const void* ptr = nullptr;  // the pointer argument, if any
  std::uint64_t call_number = 0;  // 1-based count of calls to `op` so far
};

enum class FaultAction {
  kReturnError,        // return `code` with a message naming the call
  kThrowBadAlloc,      // throw std::bad_alloc
  kThrowRuntimeError,  // throw std::runtime_error
  kThrowForeign,       // throw InjectedForeignFault (not derived from std::exception)
  kDelay,              // sleep `delay`, then run the call
  kStickyError,        // this and every later call of any kind fails (a lost device)
};

// Thrown by kThrowForeign: a type no catch(const std::exception&) sees.
struct InjectedForeignFault {
  int code = 0;
};

struct FaultRule {
  enum class Schedule {
    kNthCall,      // the n-th call of `op` (1-based), once
    kEveryNth,     // every n-th call of `op`
    kProbability,  // each call with `probability`, from the seeded generator
    kPredicate,    // each call for which `predicate` returns true
  };

  std::optional<BackendOp> op;  // nullopt: every operation
  Schedule schedule = Schedule::kNthCall;
  std::uint64_t n = 1;
  double probability = 0;
  std::function<bool(const CallInfo&)> predicate;
  FaultAction action = FaultAction::kReturnError;
  absl::StatusCode code = absl::StatusCode::kResourceExhausted;
  std::chrono::microseconds delay{0};
  // Stops firing after this many fires; -1 for no limit.
  std::int64_t max_fires = -1;

  static FaultRule NthCall(BackendOp op, std::uint64_t n, FaultAction action) {
    FaultRule r;
    r.op = op;
    r.schedule = Schedule::kNthCall;
    r.n = n;
    r.action = action;
    return r;
  }
  static FaultRule EveryNth(BackendOp op, std::uint64_t n, FaultAction action) {
    FaultRule r = NthCall(op, n, action);
    r.schedule = Schedule::kEveryNth;
    return r;
  }
  static FaultRule WithProbability(std::optional<BackendOp> op, double p, FaultAction action) {
    FaultRule r;
    r.op = op;
    r.schedule = Schedule::kProbability;
    r.probability = p;
    r.action = action;
    return r;
  }
  static FaultRule When(std::optional<BackendOp> op, std::function<bool(const CallInfo&)> pred,
                        FaultAction action) {
    FaultRule r;
    r.op = op;
    r.schedule = Schedule::kPredicate;
    r.predicate = std::move(pred);
    r.action = action;
    return r;
  }
};

absl::string_view FaultActionName(FaultAction action);
bool ParseFaultAction(absl::string_view name, FaultAction* action);

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_BACKEND_FAILPOINTS_FAULT_RULE_H_
