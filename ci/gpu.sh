#!/usr/bin/env bash
# For GPU runners with Bazel: every `gpu`-tagged test of the runtime
# (conformance, properties, fault campaigns, pinned memory and transfers,
# multi-device, the backend contract, a short stress campaign), then a
# 60-second stress campaign on the device. A runner without a device fails
# (each test says "no CUDA device: ...; this is a GPU run"): a GPU job that
# finds no GPU is broken, not green. Hosts without Bazel run the bundle
# instead (ci/gpu-bundle.sh, then run.sh on the host).
# Usage: ci/gpu.sh [cuda|hip]   (default: cuda)
set -uo pipefail
source "$(dirname "$0")/lib.sh"
backend=${1:-cuda}
config=gpu
[[ $backend == hip ]] && config=gpu-hip
rc=0
run_bazel_tests gpu --config="$config" //... || rc=1
echo "=== [gpu] stress campaign on $backend"
if "$BAZELW" run --config=ci //harness:stress -- --backend="$backend" --devices=1 --duration=60 \
     --fault_rate=0.001; then
  record PASS gpu "stress-$backend"
else
  record FAIL gpu "stress-$backend"; rc=1
fi
exit $rc
