#!/usr/bin/env bash
# A fuzzing campaign over every libFuzzer target in fuzz/.
# Usage: ci/fuzz.sh DURATION_SECONDS [--update-corpus]
#   Each target runs DURATION seconds from its seed corpus; new inputs are
#   merged into a minimised corpus (copied back into fuzz/corpus/ with
#   --update-corpus). A crash fails the campaign; its reproducer is saved under
#   $FUZZ_OUT (default /tmp/gpualloc-fuzz) and can be added to
#   fuzz/crashes/<target>/ to become a regression test.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
duration=${1:?usage: $0 DURATION_SECONDS [--update-corpus]}
update=${2:-}
[[ $duration =~ ^[0-9]+$ ]] || { echo "DURATION must be whole seconds" >&2; exit 2; }
out=${FUZZ_OUT:-/tmp/gpualloc-fuzz}
mkdir -p "$out"

targets=$(cd "$ROOT/fuzz" && ls -d corpus/*/ | xargs -n1 basename)
labels=$(for t in $targets; do echo "//fuzz:${t}_run"; done)
echo "=== [fuzz] building $(echo $targets) with --config=fuzz"
if ! "$BAZELW" build --config=ci --config=fuzz $labels >"$out/build.log" 2>&1; then
  grep -vE '^(INFO|Loading|Analyzing)|Cannot export local symbol' "$out/build.log" | tail -40
  record FAIL fuzz build
  exit 1
fi
# The same clang build checks the thread-safety annotations of every
# allocator library (-Wthread-safety, errors on our code; see .bazelrc). The
# CUDA and HIP backends build with the default toolchain only.
libs=$("$BAZELW" query 'kind(cc_library, //allocator/...) except //allocator/backend/cuda/... except //allocator/backend/hip/...' 2>/dev/null)
echo "=== [fuzz] clang -Wthread-safety over $(echo "$libs" | wc -l) allocator libraries"
if "$BAZELW" build --config=ci --config=fuzz $libs >"$out/thread-safety.log" 2>&1; then
  record PASS fuzz thread-safety
else
  grep -E 'error:|warning:' "$out/thread-safety.log" | head -40
  record FAIL fuzz thread-safety
  exit 1
fi
bin=$("$BAZELW" info --config=fuzz bazel-bin 2>/dev/null)
rc=0
for t in $targets; do
  work="$out/$t"
  rm -rf "$work"; mkdir -p "$work/corpus" "$work/merged" "$work/crashes"
  cp "$ROOT/fuzz/corpus/$t/"* "$work/corpus/"
  dict=()
  [[ -f "$ROOT/fuzz/$t.dict" ]] && dict=(-dict="$ROOT/fuzz/$t.dict")
  echo "=== [fuzz] $t for ${duration}s"
  "$bin/fuzz/${t}_run" -max_total_time="$duration" -timeout=25 -rss_limit_mb=4096 \
      -print_final_stats=1 -artifact_prefix="$work/crashes/" "${dict[@]}" "$work/corpus" \
      >"$work/fuzz.log" 2>&1
  status=$?
  grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added)' "$work/fuzz.log" | sed 's/^/    /'
  if [[ $status -ne 0 ]] || ls "$work/crashes/"* >/dev/null 2>&1; then
    echo "  crash in $t; reproducer(s):"; ls "$work/crashes/"
    grep -E 'ERROR|SUMMARY|_fuzz:' "$work/fuzz.log" | head -10
    record FAIL fuzz "$t"
    rc=1
    continue
  fi
  "$bin/fuzz/${t}_run" -merge=1 "$work/merged" "$ROOT/fuzz/corpus/$t" "$work/corpus" \
      >"$work/merge.log" 2>&1
  echo "    corpus: $(ls "$ROOT/fuzz/corpus/$t" | wc -l) seeds -> $(ls "$work/merged" | wc -l) after merge"
  if [[ $update == --update-corpus ]]; then
    cp "$work/merged/"* "$ROOT/fuzz/corpus/$t/"
  fi
  record PASS fuzz "$t"
done
exit $rc
