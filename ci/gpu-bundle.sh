#!/usr/bin/env bash
# Builds the relocatable GPU bundle: every `gpu` test of the CUDA runtime, the
# stress runner, the benchmark suite and libgpualloc_torch.so (-c opt), the
# non-system shared libraries they need (found through $ORIGIN rpaths), the
# gpualloc_torch wheel and its GPU check script, and run.sh, which runs every
# check with its own time limit and writes report.md and report.json.
# The result runs on a Linux GPU host with no Bazel and no Debian packages.
#
# Usage: ci/gpu-bundle.sh OUTDIR      (writes OUTDIR/gpualloc-gpu-bundle/ and
#                                      OUTDIR/gpualloc-gpu-bundle.tar.gz)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:?usage: ci/gpu-bundle.sh OUTDIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
bundle="$out/gpualloc-gpu-bundle"
cd "$ROOT"

# Statically linked test binaries (no Bazel solib tree); what stays dynamic is
# looked up next to the binary first.
build_flags=(-c opt --dynamic_mode=off '--linkopt=-Wl,-rpath,$ORIGIN/../lib' --config=ci)
tests=$(./bazelw query --noshow_progress \
  'kind(cc_test, attr(tags, "\bgpu\b", tests(//...))) except attr(tags, "\bhip\b", //...)' 2>/dev/null)
binaries=(//harness/stress //harness/bench //allocator/adapters:libgpualloc_torch.so)
echo "gpu-bundle: building $(echo "$tests" | wc -w) gpu tests and ${#binaries[@]} binaries (-c opt)"
./bazelw build "${build_flags[@]}" $tests "${binaries[@]}" >"$out/build.log" 2>&1 ||
  { tail -40 "$out/build.log"; exit 1; }
bin_dir="$(./bazelw info "${build_flags[@]}" bazel-bin 2>/dev/null)"

rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/lib" "$bundle/python"
for t in $tests; do
  path="${t#//}"; path="${path/://}"
  install -m 755 "$bin_dir/$path" "$bundle/bin/"
done
install -m 755 "$bin_dir/harness/stress/stress" "$bundle/bin/"
install -m 755 "$bin_dir/harness/bench/bench" "$bundle/bin/"
install -m 755 "$bin_dir/allocator/adapters/libgpualloc_torch.so" "$bundle/lib/"

# The loader's own libraries and the GPU driver come from the host; anything
# else a binary needs is copied into lib/ (found through the $ORIGIN rpath).
system_lib='^(linux-vdso|ld-linux.*|libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|libcuda|libamdhip64)\.so'
for elf in "$bundle"/bin/* "$bundle"/lib/*.so; do
  while read -r name _ target _; do
    [[ -n "$name" && -n "${target:-}" && "$target" == /* ]] || continue
    [[ "$name" =~ $system_lib ]] && continue
    [[ -e "$bundle/lib/$name" ]] || install -m 644 "$(readlink -f "$target")" "$bundle/lib/$name"
  done < <(ldd "$elf" 2>/dev/null)
done

# The PyTorch integration: the wheel (Debian's python3 tooling, no network)
# and the GPU check script.
# Built from a copy, so the source tree stays clean.
wheel_src="$(mktemp -d)"
cp -r "$ROOT/python/gpualloc_torch/." "$wheel_src/"
/usr/bin/python3 -m pip wheel --no-deps --no-build-isolation --no-index -q \
  -w "$bundle/python" "$wheel_src" >"$out/wheel.log" 2>&1 ||
  { cat "$out/wheel.log"; rm -rf "$wheel_src"; exit 1; }
rm -rf "$wheel_src"
install -m 644 "$ROOT/python/check/torch_gpu_check.py" "$bundle/python/"
install -m 755 "$ROOT/ci/gpu-bundle/run.sh" "$bundle/run.sh"
git -C "$ROOT" rev-parse HEAD >"$bundle/COMMIT" 2>/dev/null || echo unknown >"$bundle/COMMIT"

tar -C "$out" -czf "$out/gpualloc-gpu-bundle.tar.gz" gpualloc-gpu-bundle
size=$(du -sb "$bundle" | cut -f1)
echo "gpu-bundle: $bundle ($((size >> 20)) MiB; $(ls "$bundle/bin" | wc -l) binaries," \
     "$(ls "$bundle/lib" | wc -l) libraries), $(du -h "$out/gpualloc-gpu-bundle.tar.gz" | cut -f1) tar.gz"
if (( size >= 64 << 20 )); then
  echo "gpu-bundle: the bundle is over 64 MiB" >&2
  exit 1
fi
