#!/usr/bin/env bash
# A short stress campaign on the real CUDA device: threads, streams, injected
# faults and cross-stream frees over the real runtime. Without a device the
# runner exits non-zero with "no CUDA device: ..." (a GPU run needs one).
set -euo pipefail
stress="$1"
out="${TEST_UNDECLARED_OUTPUTS_DIR:-${TEST_TMPDIR:-/tmp}}"
exec "$stress" --backend=cuda --devices=1 --threads=4 --streams=3 --duration=15 \
  --max_size=$((64 << 20)) --fault_rate=0.001 --seed="${GPUALLOC_TEST_SEED:-1}" \
  --report_json="$out/stress_gpu.json"
