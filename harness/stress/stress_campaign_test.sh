#!/usr/bin/env bash
# The nightly stress campaign as a sharded Bazel test: this shard's block of
# seeds (harness/testing/shard_seeds.sh), each a 30-second campaign with
# faults on the simulated device. A failing seed is named by the runner.
set -euo pipefail
stress="$1"
TOTAL_SEEDS=${GPUALLOC_STRESS_SEEDS:-16} source "$2"
echo "stress campaign, $SHARD_NAME"
out="${TEST_UNDECLARED_OUTPUTS_DIR:-${TEST_TMPDIR:-/tmp}}"
for ((seed = SHARD_FIRST_SEED; seed < SHARD_FIRST_SEED + SHARD_SEEDS; seed++)); do
  "$stress" --seed="$seed" --duration="${GPUALLOC_STRESS_SECONDS:-30}" --threads=4 \
    --fault_rate=0.001 --report_json="$out/stress-$seed.json"
done
