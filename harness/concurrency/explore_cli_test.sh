#!/usr/bin/env bash
# The explore tool end to end: one seed run in two separate processes prints
# the same trace hash (determinism across processes, not just within one);
# a planted bug exits 1 with a replay command that reproduces it; bad flags
# exit 2.
set -uo pipefail
explore="$(dirname "$0")/explore"
[[ -x "$explore" ]] || explore="$TEST_SRCDIR/$TEST_WORKSPACE/harness/concurrency/explore"

fail() { echo "FAIL: $*"; exit 1; }

for strategy in random pct; do
  a=$("$explore" --seed=11 --seeds=3 --strategy=$strategy) || fail "$strategy run failed: $a"
  b=$("$explore" --seed=11 --seeds=3 --strategy=$strategy) || fail "$strategy rerun failed: $b"
  echo "$a"
  [[ "$a" == "$b" ]] || fail "$strategy: two processes disagree:\n$a\n---\n$b"
  [[ $(grep -c "trace_hash=[0-9a-f]\{16\} ok" <<<"$a") == 3 ]] || fail "expected 3 ok lines"
done

out=$("$explore" --plant_bug --seed=1 --seeds=20)
rc=$?
[[ $rc == 1 ]] || fail "planted bug: exit $rc, expected 1:\n$out"
grep -qE "DATA_LOSS|FAILED_PRECONDITION" <<<"$out" || fail "planted bug: no finding in:\n$out"
replay=$(grep -o -- "--seed=[0-9]* .*" <<<"$out" | tail -1)
again=$("$explore" $replay)
[[ $? == 1 ]] || fail "the replay command did not fail again"
# Device addresses differ between processes; everything else must not.
mask() { tail -3 | sed -E 's/0x[0-9a-f]+/0x?/g'; }
[[ "$(mask <<<"$out")" == "$(mask <<<"$again")" ]] ||
  fail "the replay differs:\n$out\n---\n$again"

"$explore" --strategy=fifo >/dev/null 2>&1
[[ $? == 2 ]] || fail "--strategy=fifo should exit 2"
"$explore" --threads=0 >/dev/null 2>&1
[[ $? == 2 ]] || fail "--threads=0 should exit 2"
echo PASS
