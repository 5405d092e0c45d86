#!/usr/bin/env bash
# Mutation testing: seeds realistic bugs into the allocator's sources, one at a
# time, and checks that the default test run catches each (harness/mutation/).
# Usage: ci/mutation.sh [--sample N] [--seed S] [--threshold PCT] [--config tsan]
#                       [--rules r1,r2] [--ids 1,2] [--out DIR] [PATH...]
# With no PATH, every product source under allocator/. Writes DIR/report.md
# and DIR/report.json (default: mutation-report/).
set -euo pipefail
cd "$(dirname "$0")/.."
./bazelw version >/dev/null 2>&1 || true   # installs the packages (python3-clang-14)
exec /usr/bin/python3 harness/mutation/runner.py "$@"
