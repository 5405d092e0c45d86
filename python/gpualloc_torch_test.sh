#!/usr/bin/env bash
# Builds the gpualloc_torch wheel, installs it with pip from the wheel alone
# (no index), then runs the package's tests from the installed copy.
set -euo pipefail
root="$PWD/python/gpualloc_torch"
work="${TEST_TMPDIR:-$(mktemp -d)}"
export HOME="$work" PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
python=/usr/bin/python3
cp -rL "$root" "$work/src"
rm -rf "$work/src/tests"
"$python" -m pip wheel --no-deps --no-build-isolation --no-index -q -w "$work/wheel" "$work/src"
wheel=("$work"/wheel/gpualloc_torch-*-py3-none-any.whl)
"$python" -m pip install -q --no-index --no-deps --target "$work/site" "${wheel[0]}"
[[ -f "$work/site/gpualloc_torch/__init__.py" ]] || { echo "pip did not install the package"; exit 1; }
export GPUALLOC_TORCH_PACKAGE="$work/site"
export GPUALLOC_TORCH_LIBRARY="$PWD/allocator/adapters/libgpualloc_torch.so"
"$python" "$root/tests/test_gpualloc_torch.py" -v
