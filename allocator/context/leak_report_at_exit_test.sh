#!/usr/bin/env bash
set -u
out=$("$TEST_SRCDIR/$TEST_WORKSPACE/allocator/context/leak_at_exit_example" 2>&1); rc=$?
echo "$out"
[[ $rc -eq 0 ]] || { echo "FAIL: exit $rc"; exit 1; }
grep -q "gpualloc leak report:" <<<"$out" || { echo "FAIL: no report at exit"; exit 1; }
grep -q '1 leaked allocations (3.0 MiB)' <<<"$out" || { echo "FAIL: wrong count or size"; exit 1; }
grep -q 'tag "forgotten-cache": 1 allocations, 3.0 MiB' <<<"$out" || { echo "FAIL: tag missing"; exit 1; }
echo ok
