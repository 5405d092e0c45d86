#!/bin/bash -eu
# ClusterFuzzLite / OSS-Fuzz entry point: the project's own layout script.
cd "$SRC/gpualloc"
OUT="$OUT" fuzz/build.sh
