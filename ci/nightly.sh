#!/usr/bin/env bash
# The nightly job: everything .ci/run does, with more time, plus the long
# campaigns no per-submission run can afford. A scheduler (cron, a CI
# "schedule" trigger) runs this script; it ends like .ci/run, with one line
# "N passed, N failed", and exits non-zero on any failure.
#   1. the whole suite under ASan+UBSan and TSan      (ci/sanitizers.sh all)
#   2. every fuzz target for an hour, corpus merged   (ci/fuzz.sh 3600 --update-corpus)
#   3. deterministic schedules, 2000 seeds per policy (ci/explore.sh 2000)
#   4. the long suites tagged `manual`: 100x the property cases and the
#      fault campaigns over many seeds (//properties:caching_model_stress_test,
#      //harness/faults:fault_campaign_stress_test)
#   5. a ten-minute stress campaign with faults and expandable segments
#   6. the revert check (ci/revert-check.sh)
#   7. mutation testing: every mutant under allocator/, 95% to pass
#      (ci/mutation.sh; report in mutation-report/)
# Usage: ci/nightly.sh [--quick]   (--quick: every stage, minutes instead of hours,
#                                   to check the job itself)
set -uo pipefail
cd "$(dirname "$0")/.."
source ci/lib.sh
quick=false
case ${1:-} in
  --quick) quick=true ;;
  "") ;;
  *) echo "usage: $0 [--quick]" >&2; exit 2 ;;
esac
export GPUALLOC_CI_RESULTS
GPUALLOC_CI_RESULTS=$(mktemp)
start=$SECONDS

if $quick; then
  fuzz_seconds=10; explore_seeds=20; stress_seconds=10; update=""; mutants=(--sample 10)
else
  fuzz_seconds=3600; explore_seeds=2000; stress_seconds=600; update="--update-corpus"; mutants=()
fi

bash ci/sanitizers.sh all || true
bash ci/fuzz.sh "$fuzz_seconds" $update || true
bash ci/explore.sh "$explore_seeds" || true
run_bazel_tests long //properties:caching_model_stress_test \
  //harness/faults:fault_campaign_stress_test || true

echo "=== [stress] ${stress_seconds} s campaign, faults and expandable segments"
if out=$("$BAZELW" run --config=ci -c opt //harness:stress -- --duration="$stress_seconds" \
           --fault_rate=0.002 --expandable_segments --seed="$(date +%j)" 2>&1); then
  record PASS stress nightly-campaign
  grep -E "^(ran|stream order|result)" <<<"$out"
else
  record FAIL stress nightly-campaign
  tail -20 <<<"$out"
fi

bash ci/revert-check.sh || true

echo "=== [mutation] ${mutants[*]:-every mutant} under allocator/"
if bash ci/mutation.sh "${mutants[@]}" --threshold 95 --out mutation-report 2>&1 | tail -40; then
  record PASS mutation nightly-score
else
  record FAIL mutation nightly-score
fi

passed=$(grep -c '^PASS' "$GPUALLOC_CI_RESULTS")
failed=$(grep -c '^FAIL' "$GPUALLOC_CI_RESULTS")
echo
echo "=== nightly finished in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
if (( failed > 0 )); then
  echo "failures:"; grep '^FAIL' "$GPUALLOC_CI_RESULTS" | sed 's/^FAIL /  /'
fi
rm -f "$GPUALLOC_CI_RESULTS"
echo "$passed passed, $failed failed"
(( failed == 0 && passed > 0 ))
