#!/usr/bin/env bash
# Nightly sanitizer runs: the whole suite under AddressSanitizer+UBSan and
# under ThreadSanitizer (every test, the `concurrency`-tagged ones included).
# Usage: ci/sanitizers.sh [asan|tsan|ubsan|all]   (default: all = asan + tsan)
set -uo pipefail
source "$(dirname "$0")/lib.sh"
which=${1:-all}
case $which in
  asan|tsan|ubsan) configs=("$which") ;;
  all) configs=(asan tsan) ;;
  *) echo "usage: $0 [asan|tsan|ubsan|all]" >&2; exit 2 ;;
esac
rc=0
for config in "${configs[@]}"; do
  run_bazel_tests "$config" "--config=$config" //... || rc=1
done
exit $rc
