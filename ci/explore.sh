#!/usr/bin/env bash
# A nightly deterministic-schedule campaign: the explore tool over every
# cross-stream policy, with and without expandable segments, under both
# strategies (random walk and PCT), SEEDS seeds each (default 200).
# A failing seed prints the command that replays it exactly.
# Usage: ci/explore.sh [SEEDS] [FIRST_SEED]
set -uo pipefail
source "$(dirname "$0")/lib.sh"
seeds=${1:-200}
first=${2:-1}
[[ $seeds =~ ^[0-9]+$ && $first =~ ^[0-9]+$ ]] || { echo "usage: $0 [SEEDS] [FIRST_SEED]" >&2; exit 2; }

echo "=== [explore] building //harness/concurrency:explore"
if ! "$BAZELW" build --config=ci -c opt //harness/concurrency:explore >/dev/null 2>&1; then
  record FAIL explore build
  exit 1
fi
explore="$("$BAZELW" info --config=ci -c opt bazel-bin 2>/dev/null)/harness/concurrency/explore"
rc=0
for reuse in none opportunistic follow; do
  for expandable in false true; do
    for strategy in random pct; do
      name="$reuse-expandable_$expandable-$strategy"
      if out=$("$explore" --seed="$first" --seeds="$seeds" --strategy="$strategy" \
                 --cross_stream_reuse="$reuse" --expandable_segments="$expandable" \
                 --threads=4 --ops=60 2>&1); then
        echo "ok   $name: $seeds schedules"
        record PASS explore "$name"
      else
        echo "FAIL $name:"; grep -A2 FAILED <<<"$out"
        record FAIL explore "$name"; rc=1
      fi
    done
  done
done
exit $rc
