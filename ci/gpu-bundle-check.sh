#!/usr/bin/env bash
# Builds the GPU bundle (ci/gpu-bundle.sh) and checks, on this GPU-less
# machine, that it is relocatable and complete:
#  - under 64 MiB; every ELF needs only the host's C/C++ runtime and GPU
#    driver, or libraries in the bundle's lib/ (through an $ORIGIN rpath);
#    nothing from Abseil or any other Debian library;
#  - copied to another directory and run from a third, with LD_LIBRARY_PATH
#    empty, every binary loads and fails cleanly for lack of a device
#    ("no CUDA device"), never a loader error or a crash;
#  - run.sh writes report.md and report.json listing every check;
#  - the wheel installs with pip, and the plug-in loads through ctypes.
# Records one result per check for .ci/run. Usage: ci/gpu-bundle-check.sh
set -uo pipefail
source "$(dirname "$0")/lib.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rc=0
fail() { record FAIL gpu-bundle "$1"; echo "  $2"; rc=1; }
pass() { record PASS gpu-bundle "$1"; }

echo "=== [gpu-bundle] build"
start=$SECONDS
if ! bash "$ROOT/ci/gpu-bundle.sh" "$work/out"; then
  fail build "ci/gpu-bundle.sh failed"; exit 1
fi
pass build
echo "    built in $((SECONDS - start)) s"
# Relocate: another directory, run from a third.
mv "$work/out/gpualloc-gpu-bundle" "$work/elsewhere"
bundle="$work/elsewhere"
mkdir -p "$work/cwd" && cd "$work/cwd"
export LD_LIBRARY_PATH=

allowed='^(linux-vdso\.so\.1|ld-linux-x86-64\.so\.2|libc\.so\.6|libm\.so\.6|libdl\.so\.2|librt\.so\.1|libpthread\.so\.0|libstdc\+\+\.so\.6|libgcc_s\.so\.1)$'
bad=""
for elf in "$bundle"/bin/* "$bundle"/lib/*.so*; do
  for needed in $(readelf -d "$elf" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    [[ "$needed" =~ $allowed || -e "$bundle/lib/$needed" ]] || bad+=" $(basename "$elf")->$needed"
  done
  if [[ "$elf" == */bin/* ]] && readelf -d "$elf" | grep -q NEEDED &&
     ! readelf -d "$elf" | grep -qE '(RUNPATH|RPATH).*\$ORIGIN/\.\./lib'; then
    bad+=" $(basename "$elf"):no-\$ORIGIN-rpath"
  fi
done
if readelf -d "$bundle/lib/libgpualloc_torch.so" | grep -q 'NEEDED.*libabsl'; then bad+=" torch-needs-abseil"; fi
[[ -z "$bad" ]] && pass needed-libraries || fail needed-libraries "not relocatable:$bad"

size=$(du -sb "$bundle" | cut -f1)
(( size < 64 << 20 )) && pass size || fail size "bundle is $((size >> 20)) MiB (limit 64)"

for test in "$bundle"/bin/*_test*; do
  name=$(basename "$test")
  out=$("$test" 2>&1); status=$?
  if (( status != 0 && status < 128 )) && grep -q "no CUDA device" <<<"$out" &&
     ! grep -qE "error while loading shared libraries" <<<"$out"; then
    pass "loads-$name"
  else
    fail "loads-$name" "$name: exit $status: $(tail -2 <<<"$out")"
  fi
done
out=$("$bundle/bin/stress" --backend=cuda --devices=1 --duration=1 2>&1); status=$?
(( status == 2 )) && grep -q "no CUDA device" <<<"$out" && pass loads-stress ||
  fail loads-stress "stress: exit $status: $(tail -2 <<<"$out")"
out=$("$bundle/bin/bench" --benchmark_filter='pair_256B/cudaMalloc$' --benchmark_min_time=0.01 2>&1); status=$?
(( status == 0 )) && grep -q "no CUDA device" <<<"$out" && pass loads-bench ||
  fail loads-bench "bench: exit $status: $(tail -2 <<<"$out")"

"$bundle/run.sh" "$work/report" >"$work/run.log" 2>&1; status=$?
missing=""
for check in $(cd "$bundle/bin" && ls *_test*) stress stress_memcheck bench torch_check; do
  grep -q "^| $check |" "$work/report/report.md" 2>/dev/null || missing+=" $check"
done
if (( status == 1 )) && [[ -z "$missing" ]] && python3 -c "import json,sys; json.load(open(sys.argv[1]))" "$work/report/report.json"; then
  pass run-sh-report
else
  fail run-sh-report "run.sh exit $status (1 expected without a device); missing from the report:${missing:- none}"
fi

if /usr/bin/python3 -m pip install -q --no-index --no-deps --target "$work/site" "$bundle"/python/gpualloc_torch-*.whl 2>"$work/pip.log" &&
   PYTHONPATH="$work/site" /usr/bin/python3 - "$bundle/lib/libgpualloc_torch.so" <<'PY'
import ctypes, sys
import gpualloc_torch  # installed from the wheel
lib = ctypes.CDLL(sys.argv[1])
lib.gpualloc_torch_malloc.restype = ctypes.c_void_p
assert lib.gpualloc_torch_malloc(ctypes.c_size_t(1 << 20), 0, None) is None  # no device
buf = ctypes.create_string_buffer(512)
lib.gpualloc_torch_last_error(buf, ctypes.c_size_t(512))
assert b"no CUDA device" in buf.value, buf.value
PY
then
  pass wheel-and-plugin
else
  fail wheel-and-plugin "$(tail -3 "$work/pip.log")"
fi
echo "=== [gpu-bundle] done ($((SECONDS - start)) s)"
exit $rc
