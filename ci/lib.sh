# Shared by the CI scripts: run a Bazel test stage and record each test's
# result, so .ci/run can total them. Source it; do not run it.
#
# Results go to $GPUALLOC_CI_RESULTS (one "PASS|FAIL <stage> <name>" per line)
# when it is set, so a standalone script run still prints its own summary.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BAZELW="$ROOT/bazelw"

record() {  # record PASS|FAIL STAGE NAME
  echo "$1 $2 $3" >> "${GPUALLOC_CI_RESULTS:-/dev/null}"
  [[ $1 == PASS ]] || echo "  FAILED: [$2] $3"
}

# run_bazel_tests STAGE BAZEL_TEST_ARGS...
# Runs `bazelw test ARGS`, records every test target's status from Bazel's
# summary, and returns non-zero if anything failed (including the build).
run_bazel_tests() {
  local stage=$1; shift
  local log; log=$(mktemp)
  echo "=== [$stage] bazel test $*"
  local start=$SECONDS
  "$BAZELW" test --config=ci "$@" >"$log" 2>&1
  local rc=$?
  local passed=0 failed=0 line name status
  while IFS= read -r line; do
    name=${line%% *}
    if [[ $line =~ (PASSED|FLAKY) ]]; then status=PASS; ((passed++)); else status=FAIL; ((failed++)); fi
    record "$status" "$stage" "$name"
  done < <(grep -E '^//[^ ]+ +(\(cached\) )?(PASSED|FAILED|FLAKY|TIMEOUT|NO STATUS|FAILED TO BUILD|INCOMPLETE)' "$log")
  if [[ $rc -ne 0 && $failed -eq 0 ]]; then
    # The build failed before any test ran: that is a failure too.
    record FAIL "$stage" "bazel-exit-$rc"
    ((failed++))
  fi
  if [[ $failed -ne 0 || $rc -ne 0 ]]; then
    echo "--- [$stage] log tail:"; grep -vE '^(INFO|Loading|Analyzing)' "$log" | tail -60
  fi
  echo "=== [$stage] $passed passed, $failed failed ($((SECONDS - start)) s)"
  rm -f "$log"
  [[ $failed -eq 0 && $rc -eq 0 ]]
}
