#!/usr/bin/env bash
# shard_seeds.sh: for several seed counts and shard counts, the shards' blocks
# are disjoint, cover every seed, each shard touches the status file, and a
# bad index is refused.
set -euo pipefail
helper="$PWD/harness/testing/shard_seeds.sh"
work="${TEST_TMPDIR:-$(mktemp -d)}"
for total in 1 7 100 4000; do
  for shards in 1 2 3 8 13; do
    : >"$work/seeds"
    for ((i = 0; i < shards; i++)); do
      rm -f "$work/status"
      (
        export TEST_TOTAL_SHARDS=$shards TEST_SHARD_INDEX=$i TEST_SHARD_STATUS_FILE="$work/status"
        TOTAL_SEEDS=$total FIRST_SEED=5 source "$helper"
        if (( SHARD_SEEDS > 0 )); then seq "$SHARD_FIRST_SEED" $((SHARD_FIRST_SEED + SHARD_SEEDS - 1)); fi
      ) >>"$work/seeds"
      [[ -f "$work/status" ]] || { echo "shard $i of $shards did not touch the status file"; exit 1; }
    done
    if [[ "$(sort -n "$work/seeds")" != "$(seq 5 $((5 + total - 1)))" ]]; then
      echo "$shards shards of $total seeds do not cover 5..$((5 + total - 1)) exactly once"; exit 1
    fi
  done
done
if (TEST_TOTAL_SHARDS=4 TEST_SHARD_INDEX=4 TOTAL_SEEDS=10 source "$helper") 2>/dev/null; then
  echo "an index outside the shards was accepted"; exit 1
fi
echo "every split covers every seed exactly once"
