#!/usr/bin/env bash
# For GPU runners: the tests tagged `gpu` (the shared backend contract against
# the real CUDA and HIP runtimes), then the stress campaign on the device.
# On a machine without a device they skip with the runtime's own message.
# Usage: ci/gpu.sh [cuda|hip]   (default: cuda)
set -uo pipefail
source "$(dirname "$0")/lib.sh"
backend=${1:-cuda}
rc=0
run_bazel_tests gpu --config=gpu //... || rc=1
echo "=== [gpu] stress campaign on $backend"
if "$BAZELW" run --config=ci //harness:stress -- --backend="$backend" --devices=1 --duration=60 \
     --fault_rate=0.001; then
  record PASS gpu "stress-$backend"
else
  status=$?
  if [[ $status -eq 2 ]]; then
    echo "  no $backend device here: stress skipped"
  else
    record FAIL gpu "stress-$backend"; rc=1
  fi
fi
exit $rc
