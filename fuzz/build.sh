#!/usr/bin/env bash
# Builds every fuzz target into OSS-Fuzz's $OUT layout, for OSS-Fuzz and
# ClusterFuzzLite (which run it inside their builder image) or by hand:
#   OUT=/tmp/out fuzz/build.sh
# For each target T it writes:
#   $OUT/T                   the libFuzzer binary (clang, ASan + UBSan)
#   $OUT/T_seed_corpus.zip   fuzz/corpus/T plus the saved crashes in fuzz/crashes/T
#   $OUT/T.dict              fuzz/T.dict, when there is one
#   $OUT/T.options           libFuzzer options (dictionary, input size bound)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${OUT:?set OUT to the output directory}"
mkdir -p "$out"
cd "$root"
targets=$(ls -d fuzz/corpus/*/ | xargs -n1 basename)
labels=$(for t in $targets; do echo "//fuzz:${t}_run"; done)
# OSS-Fuzz provides CC/CXX (clang); default to the system clang.
./bazelw build --config=ci --config=fuzz --repo_env=CC="${CC:-clang}" $labels
bin=$(./bazelw info --config=fuzz bazel-bin 2>/dev/null)
for t in $targets; do
  cp -f "$bin/fuzz/${t}_run" "$out/$t"
  python3 - "$out/${t}_seed_corpus.zip" "fuzz/corpus/$t" "fuzz/crashes/$t" <<'PY'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w") as z:
    for d in sys.argv[2:]:
        if os.path.isdir(d):
            for name in sorted(os.listdir(d)):
                if not name.startswith("."):
                    z.write(os.path.join(d, name), f"{os.path.basename(d)}-{name}")
PY
  {
    echo "[libfuzzer]"
    echo "max_len = 4096"
    if [[ -f "fuzz/$t.dict" ]]; then
      cp -f "fuzz/$t.dict" "$out/$t.dict"
      echo "dict = $t.dict"
    fi
  } > "$out/$t.options"
  echo "built $t"
done
