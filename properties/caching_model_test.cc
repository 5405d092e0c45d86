// Stateful, model-based property tests (rapidcheck/state.h) of the caching
// allocator, the size-class pool and the weights arena over it, and the
// pinned host allocator: random command sequences run against the real
// allocators on the simulated device. The reference model — the live
// allocations and their bytes — lives in harness::OpInterpreter, which checks
// it, the shared invariants and the content cookies after every command, and
// at the end that the sim's accounting returns to zero. A failure is shrunk
// to a minimal command sequence and printed with the RC_PARAMS that replay it.
#include <cstdint>
#include <ostream>

#include "harness/ops/interpreter.h"
#ifdef GPUALLOC_TEST_RUNTIME
#include "harness/gpu/require_device.h"
#endif
#include "harness/ops/ops.h"
#include "gtest/gtest.h"
#include "rapidcheck.h"
#include "rapidcheck/gtest.h"
#include "rapidcheck/state.h"

namespace gpualloc::harness {
namespace {

// What the generator must know to make sensible commands; what the
// allocator actually did is checked inside the interpreter.
struct Model {
  int streams = 3;
};

using Command = rc::state::Command<Model, OpInterpreter>;

// One class per op kind, so shrinking removes whole commands and simplifies
// each one's arguments.
template <OpKind kKind>
struct OpCommand : Command {
  Op op;
  explicit OpCommand(const Model& m) {
    op.kind = kKind;
    switch (kKind) {
      case OpKind::kAllocate:
        op.a = *rc::gen::weightedOneOf<std::uint64_t>(
            {{6, rc::gen::inRange<std::uint64_t>(1, 64 * 1024)},
             {3, rc::gen::inRange<std::uint64_t>(64 * 1024, 4 << 20)},
             {1, rc::gen::inRange<std::uint64_t>(4 << 20, 40 << 20)}});
        op.b = *rc::gen::inRange<std::uint64_t>(0, m.streams);
        break;
      case OpKind::kSharedView:
        op.a = *rc::gen::inRange<std::uint64_t>(1, 1 << 20);
        op.b = *rc::gen::inRange<std::uint64_t>(0, 1 << 21);
        break;
      case OpKind::kPinnedAllocate:
        op.a = *rc::gen::inRange<std::uint64_t>(1, 1 << 20);
        op.b = *rc::gen::inRange<std::uint64_t>(0, 2);
        break;
      case OpKind::kSetLimit:
        op.a = *rc::gen::weightedOneOf<std::uint64_t>(
            {{1, rc::gen::just<std::uint64_t>(0)},
             {2, rc::gen::inRange<std::uint64_t>(16, 1024)}});  // x 64 KiB
        break;
      case OpKind::kEnqueueWork:
      case OpKind::kPinnedCopy:  // the flag bits too (write, order back, direction)
      case OpKind::kStagingReadback:  // in flight or checked
      case OpKind::kKeyedReduce:
      case OpKind::kBridgeEcho:
      case OpKind::kPeerCopy:
        op.a = *rc::gen::inRange<std::uint64_t>(0, 1 << 13);
        op.b = *rc::gen::inRange<std::uint64_t>(0, 1 << 13);
        break;
      default:
        op.a = *rc::gen::inRange<std::uint64_t>(0, 1 << 12);
        op.b = *rc::gen::inRange<std::uint64_t>(0, m.streams);
        break;
    }
  }
  void run(const Model&, OpInterpreter& sut) const override {
    const absl::Status st = sut.Apply(op);
    if (!st.ok()) RC_FAIL(std::string(st.message()));
  }
  void show(std::ostream& os) const override { os << op.ToString(); }
};

void CheckRandomCommandSequences(CrossStreamReuse policy,
                                 InterpreterStack stack = InterpreterStack::kCaching) {
  InterpreterOptions options;
  options.device_capacity = std::size_t{96} << 20;
  options.caching.cross_stream = policy;
  options.caching.front_cache_blocks = *rc::gen::element<std::size_t>(0, 0, 4);
  options.stack = stack;
  options.seed = *rc::gen::inRange<std::uint64_t>(1, 1 << 20);
#ifdef GPUALLOC_TEST_RUNTIME  // the gpu_test build: the same properties on the real device
  options.device = MakeRealBackend(GPUALLOC_TEST_RUNTIME);
#endif
  OpInterpreter sut(options);
  rc::state::check(Model{}, sut,
                   rc::state::gen::execOneOfWithArgs<
                       OpCommand<OpKind::kAllocate>, OpCommand<OpKind::kAllocate>,
                       OpCommand<OpKind::kFree>, OpCommand<OpKind::kFreeOnOtherStream>,
                       OpCommand<OpKind::kRecordUse>, OpCommand<OpKind::kSyncStream>,
                       OpCommand<OpKind::kEmptyCache>, OpCommand<OpKind::kSetLimit>,
                       OpCommand<OpKind::kInjectFault>, OpCommand<OpKind::kBadFree>,
                       OpCommand<OpKind::kPinnedAllocate>, OpCommand<OpKind::kPinnedFree>,
                       OpCommand<OpKind::kSwitchDevice>, OpCommand<OpKind::kCopy>,
                       OpCommand<OpKind::kSharedView>, OpCommand<OpKind::kEnqueueWork>,
                       OpCommand<OpKind::kEnqueueWork>, OpCommand<OpKind::kWaitEvent>,
                       OpCommand<OpKind::kFreeInFlight>, OpCommand<OpKind::kHostSync>,
                       OpCommand<OpKind::kPinnedCopy>, OpCommand<OpKind::kStagingReadback>,
                       OpCommand<OpKind::kKeyedReduce>, OpCommand<OpKind::kBridgeEcho>,
                       OpCommand<OpKind::kPeerCopy>>());
  const absl::Status st = sut.Finish();
  if (!st.ok()) RC_FAIL(std::string(st.message()));
}

RC_GTEST_PROP(CachingAllocatorModel, FollowEventsPolicyKeepsEveryInvariant, ()) {
  CheckRandomCommandSequences(CrossStreamReuse::kFollowEvents);
}

RC_GTEST_PROP(CachingAllocatorModel, OpportunisticPolicyKeepsEveryInvariant, ()) {
  CheckRandomCommandSequences(CrossStreamReuse::kOpportunistic);
}

RC_GTEST_PROP(CachingAllocatorModel, NoCrossStreamPolicyKeepsEveryInvariant, ()) {
  CheckRandomCommandSequences(CrossStreamReuse::kNone);
}

RC_GTEST_PROP(SizeClassPoolModel, KeepsEveryInvariant, ()) {
  CheckRandomCommandSequences(CrossStreamReuse::kFollowEvents, InterpreterStack::kSizeClassOverCaching);
}

RC_GTEST_PROP(ArenaModel, KeepsEveryInvariant, ()) {
  CheckRandomCommandSequences(CrossStreamReuse::kFollowEvents, InterpreterStack::kArenaOverCaching);
}

}  // namespace
}  // namespace gpualloc::harness
