#!/usr/bin/env bash
# Runs the fault campaign binary as Bazel runs 3 shards of it (the variables
# Bazel's test setup exports), and checks the protocol: each shard
# acknowledges through the status file, no seed runs twice, and the shards
# together run seeds 1..N.
set -euo pipefail
binary="$1"
work="${TEST_TMPDIR:-$(mktemp -d)}"
n=9
total=3
: >"$work/all-seeds"
for ((i = 0; i < total; i++)); do
  status="$work/status-$i"
  rm -f "$status"
  TEST_TOTAL_SHARDS=$total TEST_SHARD_INDEX=$i TEST_SHARD_STATUS_FILE="$status" \
    GTEST_TOTAL_SHARDS=$total GTEST_SHARD_INDEX=$i GTEST_SHARD_STATUS_FILE="$status" \
    GPUALLOC_CAMPAIGNS=$n "$binary" >"$work/out-$i" 2>&1 ||
    { cat "$work/out-$i"; echo "shard $i failed"; exit 1; }
  [[ -f "$status" ]] || { echo "shard $i did not touch the shard status file"; exit 1; }
  grep -o '^\[       OK \] Seed/FaultCampaigns\.[A-Za-z]*/[0-9]*' "$work/out-$i" |
    sed 's#.*/##' >>"$work/all-seeds"
done
expected="$(seq 1 $n)"
got="$(sort -n "$work/all-seeds")"
if [[ "$got" != "$expected" ]]; then
  echo "the shards ran these seeds:"; echo "$got"
  echo "expected each of 1..$n exactly once"
  exit 1
fi
echo "$total shards ran seeds 1..$n, each exactly once"
