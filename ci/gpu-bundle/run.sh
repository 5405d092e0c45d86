#!/usr/bin/env bash
# Runs every check of the GPU bundle on this machine, each with its own time
# limit, and writes REPORT_DIR/report.md and REPORT_DIR/report.json (one row
# per check: name, result, seconds, detail). Exit status: 0 when every check
# passed, 1 otherwise. Needs: bash, coreutils; a CUDA device and driver; for
# the PyTorch check, a python3 with torch; compute-sanitizer where present.
#
# Usage: ./run.sh [REPORT_DIR]    (default: ./gpualloc-report)
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
report="${1:-$PWD/gpualloc-report}"
mkdir -p "$report/logs"
report="$(cd "$report" && pwd)"
rows=()      # name|result|seconds|detail
failed=0

json_escape() { sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/\t/ /g' | tr '\n' ' '; }

# check NAME LIMIT_S COMMAND...: runs it, logs to logs/NAME.log, records a row.
check() {
  local name=$1 limit=$2; shift 2
  local log="$report/logs/$name.log" start=$SECONDS rc result detail
  echo "=== $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  rc=$?
  case $rc in
    0) result=PASS ;;
    124|137) result=TIMEOUT ;;
    *) result=FAIL ;;
  esac
  detail="$(grep -E '^\[  (PASSED|FAILED|SKIPPED) \]|tests ran|stress:.*(violations|verdict|ops)|^check:|no CUDA device|Error|error:' "$log" | tail -4 | tr '\n' ';' | cut -c1-400)"
  [[ $result == PASS ]] || failed=1
  rows+=("$name|$result|$((SECONDS - start))|exit $rc; $detail")
  echo "    $result in $((SECONDS - start)) s"
}

# skip NAME WHY: a check that cannot run here, and why (counted as a failure
# only when the reason is ours).
skip() { rows+=("$1|UNAVAILABLE|0|$2"); echo "=== $1: unavailable: $2"; }

cd "$here"
echo "gpualloc GPU bundle $(cat COMMIT 2>/dev/null) on $(hostname)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$report/gpu.txt"

for t in bin/*_test*; do
  name="$(basename "$t")"
  check "$name" 180 "$t" --gtest_output="json:$report/logs/$name.json"
done

check stress 90 bin/stress --backend=cuda --devices=1 --threads=8 --streams=3 --duration=20 \
  --max_size=$((64 << 20)) --fault_rate=0.001 --report_json="$report/stress.json"

if command -v compute-sanitizer >/dev/null; then
  check stress_memcheck 150 compute-sanitizer --tool memcheck --leak-check full --error-exitcode 99 \
    bin/stress --backend=cuda --devices=1 --threads=2 --streams=2 --ops=2000 --fault_rate=0 \
    --max_size=$((8 << 20))
else
  skip stress_memcheck "compute-sanitizer not found on PATH"
fi

check bench 200 bin/bench --markdown="$report/bench.md" \
  --benchmark_filter='/(caching|cuda_caching|cuda_expandable|cuda_size_class|cudaMalloc|cudaMallocAsync)(/|$)' \
  --benchmark_min_time=0.05
python=${PYTHON:-python3}
if "$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  site="$report/site"
  rm -rf "$site"
  if "$python" -m pip install -q --no-index --no-deps --target "$site" python/gpualloc_torch-*.whl \
       >"$report/logs/wheel_install.log" 2>&1; then
    rows+=("wheel_install|PASS|0|pip installed $(ls python/*.whl | xargs -n1 basename)")
    check torch_check 300 env PYTHONPATH="$site" GPUALLOC_TORCH_LIBRARY="$here/lib/libgpualloc_torch.so" \
      "$python" python/torch_gpu_check.py --report "$report/torch_check.json"
  else
    failed=1
    rows+=("wheel_install|FAIL|0|$(tail -2 "$report/logs/wheel_install.log" | tr '\n' ' ')")
  fi
else
  skip torch_check "no python3 with torch and a CUDA device"
fi

{
  echo "# gpualloc GPU bundle report"
  echo
  echo "Commit $(cat COMMIT 2>/dev/null); host $(hostname); $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  [[ -f "$report/gpu.txt" ]] && echo && echo "GPU: $(cat "$report/gpu.txt")"
  echo
  echo "| check | result | seconds | detail |"
  echo "| --- | --- | --- | --- |"
  for r in "${rows[@]}"; do
    IFS='|' read -r n res s d <<<"$r"
    echo "| $n | $res | $s | ${d//|//} |"
  done
} >"$report/report.md"
{
  echo "{\"commit\": \"$(cat COMMIT 2>/dev/null)\", \"checks\": ["
  sep=""
  for r in "${rows[@]}"; do
    IFS='|' read -r n res s d <<<"$r"
    printf '%s{"name": "%s", "result": "%s", "seconds": %s, "detail": "%s"}' \
      "$sep" "$n" "$res" "$s" "$(printf '%s' "$d" | json_escape)"
    sep=$',\n'
  done
  echo "]}"
} >"$report/report.json"
cat "$report/report.md"
exit $failed
