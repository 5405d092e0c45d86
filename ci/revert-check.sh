#!/usr/bin/env bash
# Proves that every fix in docs/risk-matrix.md is enforced: for each row it
# puts the reviewed fault back (ci/revert/risk-<row>.patch, applied to the
# working tree, so only the patched file recompiles), runs the row's test, and
# requires the test to FAIL; the patch is always reversed afterwards (even on
# Ctrl-C). A row whose test still passes with its fix reverted fails this
# script. Production code carries no trace of this: the faults live only in
# the patches.
set -uo pipefail
source "$(dirname "$0")/lib.sh"

# row | test target | test filter | extra flags   (patch: ci/revert/risk-<row>.patch)
rows=(
  "1|//allocator/context:context_test|Context.FirstUseCreatesEachRuntimeOnceUnderEveryExploredSchedule|"
  "2|//allocator/host:pinned_host_allocator_test|PinnedHostAllocator.CrossDeviceFreesFromManyThreadsAreReleasedExactlyOnceAndQueuesStayBounded|"
  "3|//allocator/context:context_test|Context.CurrentDeviceIsPerThread|"
  "4|//allocator/context:context_test|Context.CreationThatThrowsLeavesNoEntryAndALaterCallRetries|"
  "5|//allocator/caching:caching_allocator_test|CachingAllocator.EveryMetadataAllocationFailureLeavesTheAllocatorAsItWas|"
  "6|//allocator/buffer:buffer_test|SharedMemory.AFailingFreeIsReportedNotThrown|"
  "7|//allocator/context:context_test|Context.InvalidDeviceIsRejectedAndTheCurrentDeviceIsUnchanged|"
  "9|//allocator/transfer:transfer_test|Transfers.AsynchronousWithNoHiddenSynchronisation|"
  "10|//allocator/caching:caching_allocator_test|CachingAllocator.FreedBlockIsReusedOnTheSameStreamWithoutABackendCall|"
  "11|//allocator/host:pinned_host_allocator_test|PinnedHostAllocator.CrossDeviceFreesFromManyThreadsAreReleasedExactlyOnceAndQueuesStayBounded|"
  "13|//allocator/caching:caching_allocator_test|CachingAllocator.EveryMetadataAllocationFailureLeavesTheAllocatorAsItWas|"
  "14|//allocator/policy:policy_test|LimitingAdaptor.HardResourceLimitRefusesAndChangesNothing|"
  "15|//allocator/buffer:buffer_test|SharedMemory.ThrowingControlBlockAllocationLeaksNothing|"
  "16|//allocator/caching:caching_allocator_test|CachingAllocator.AbsurdRequestsFailFastAndTouchNothing|"
  "17|//allocator/caching:caching_allocator_test|CachingAllocator.ConcurrentAllocateAndCrossThreadFreeKeepContentsAndBalance|--config=tsan"
)
# Rows 8 (per-call context lookup) and 12 (global coupling) are properties of
# the design (no lookup on the allocation path; everything injected), shown by
# the benchmark suite and by every test building its own objects: no single
# test can fail for them, and the script says so rather than pretend.

applied=""
restore() {
  if [[ -n $applied ]]; then git -C "$ROOT" apply -R "$applied" && applied=""; fi
}
trap restore EXIT INT TERM

wanted=("$@")
rc=0
for row in "${rows[@]}"; do
  IFS='|' read -r n target filter extra <<<"$row"
  if (( ${#wanted[@]} )) && [[ ! " ${wanted[*]} " =~ " $n " ]]; then continue; fi
  patch="$ROOT/ci/revert/risk-$n.patch"
  if ! git -C "$ROOT" apply "$patch"; then
    echo "FAIL risk $n: $patch no longer applies (update it with the code it reverts)"
    record FAIL revert-check "risk-$n:${filter#*.}"; rc=1; continue
  fi
  applied=$patch
  log=$(mktemp)
  # shellcheck disable=SC2086
  "$BAZELW" test --config=ci $extra "--test_filter=$filter" --test_output=errors \
      --nocache_test_results "$target" >"$log" 2>&1
  status=$?
  restore
  if [[ $status -eq 3 ]]; then  # Bazel: built, and the test failed
    echo "ok   risk $n reverted: $filter fails, as it must"
    record PASS revert-check "risk-$n:${filter#*.}"
  elif [[ $status -eq 0 ]]; then
    echo "FAIL risk $n reverted, but $filter still passes: the test does not enforce the fix"
    record FAIL revert-check "risk-$n:${filter#*.}"; rc=1
  else
    echo "FAIL risk $n: the reverted build did not build or run (exit $status)"
    grep -E "error|ERROR" "$log" | head -5
    record FAIL revert-check "risk-$n:${filter#*.}"; rc=1
  fi
  rm -f "$log"
done
echo "rows 8 and 12 are design properties (see docs/risk-matrix.md): not revertible by one test"

# Stream-ordering rows (docs/risk-matrix.md, "Stream order"): each patch
# ci/revert/stream-*.patch deletes one event record, stream wait or pre-unmap
# synchronisation (or a slab/chunk stream rule) from allocator code. With it
# applied, the whole default `bazelw test //...` must fail, and some failing
# test must take at most 60 s. A stream row is named by its patch, e.g.
#   ci/revert-check.sh stream-pre-unmap-wait
for patch in "$ROOT"/ci/revert/stream-*.patch; do
  name=$(basename "$patch" .patch)
  if (( ${#wanted[@]} )) && [[ ! " ${wanted[*]} " =~ " $name " ]]; then continue; fi
  if ! git -C "$ROOT" apply "$patch"; then
    echo "FAIL $name: the patch no longer applies (update it with the code it reverts)"
    record FAIL revert-check "$name"; rc=1; continue
  fi
  applied=$patch
  log=$(mktemp)
  "$BAZELW" test --config=ci --test_output=errors //... >"$log" 2>&1
  status=$?
  restore
  # The quickest failing test target: the revert must show within 60 s.
  fastest=$(grep -E '^//[^ ]+ +FAILED in [0-9.]+s' "$log" |
            sed -E 's/.*FAILED in ([0-9.]+)s.*/\1/' | sort -g | head -1)
  failing=$(grep -cE '^//[^ ]+ +FAILED in' "$log")
  if [[ $status -eq 3 && -n $fastest ]] && awk "BEGIN{exit !($fastest <= 60)}"; then
    echo "ok   $name: the default test run fails ($failing target(s), the quickest in ${fastest}s)"
    grep -m1 -E 'stream-order violation' "$log" | cut -c1-300 | sed 's/^/       /'
    record PASS revert-check "$name"
  elif [[ $status -eq 0 ]]; then
    echo "FAIL $name: reverted, yet the default test run still passes"
    record FAIL revert-check "$name"; rc=1
  else
    echo "FAIL $name: exit $status, quickest failing target ${fastest:-none} s"
    grep -E "error|ERROR" "$log" | head -5
    record FAIL revert-check "$name"; rc=1
  fi
  rm -f "$log"
done
exit $rc
