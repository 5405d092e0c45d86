#!/usr/bin/env bash
# The nightly schedule-exploration campaign as a sharded Bazel test: every
# cross-stream policy, with and without expandable segments (and once with
# per-thread front caches), under both
# strategies, over this shard's block of seeds (harness/testing/shard_seeds.sh).
# A failing seed prints the command that replays it.
set -euo pipefail
explore="$1"
TOTAL_SEEDS=${GPUALLOC_EXPLORE_SEEDS:-2400} source "$2"
echo "explore campaign, $SHARD_NAME"
(( SHARD_SEEDS > 0 )) || exit 0
for reuse in none opportunistic follow; do
  for expandable in false true; do
    for strategy in random pct; do
      "$explore" --seed="$SHARD_FIRST_SEED" --seeds="$SHARD_SEEDS" --strategy="$strategy" \
        --cross_stream_reuse="$reuse" --expandable_segments="$expandable" --threads=4 --ops=60
    done
  done
done
# The per-thread front caches, whose locks are scheduling points too.
for strategy in random pct; do
  "$explore" --seed="$SHARD_FIRST_SEED" --seeds="$SHARD_SEEDS" --strategy="$strategy" \
    --cross_stream_reuse=follow --front_cache_blocks=4 --threads=4 --ops=60
done
