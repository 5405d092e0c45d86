#!/usr/bin/env bash
# End to end: generate a trace, replay it on two stacks, and corrupt files
# are refused with exit 2 and the offending offset or line.
set -u
dir="$TEST_SRCDIR/$TEST_WORKSPACE/harness/trace"
gen="$dir/generate_trace"; replay="$dir/replay"
fail=0
"$gen" --kind=serving --events=5000 --out="$TEST_TMPDIR/s.trace" >/dev/null || { echo "FAIL generate"; fail=1; }
for a in caching backend size_class caching_expandable; do
  out=$("$replay" --trace="$TEST_TMPDIR/s.trace" --allocator=$a 2>&1) || { echo "FAIL replay $a: $out"; fail=1; continue; }
  grep -q "peak reserved" <<<"$out" && echo "ok   replay $a" || { echo "FAIL replay $a: $out"; fail=1; }
done
head -c 100 "$TEST_TMPDIR/s.trace" > "$TEST_TMPDIR/cut.trace"
out=$("$replay" --trace="$TEST_TMPDIR/cut.trace" 2>&1); rc=$?
[[ $rc -eq 2 ]] && grep -q "offset 64: truncated record" <<<"$out" && echo "ok   truncated" || { echo "FAIL truncated ($rc): $out"; fail=1; }
printf 'Thread,Time,Action,Pointer,Size,Stream\n1,00:00:00:1,allocate,0x100,64,0x0\n1,00:00:00:2,free,0x200,64,0x0\n' > "$TEST_TMPDIR/bad.csv"
out=$("$replay" --trace="$TEST_TMPDIR/bad.csv" 2>&1); rc=$?
[[ $rc -eq 2 ]] && grep -q "line 3: free of 0x200" <<<"$out" && echo "ok   bad csv" || { echo "FAIL bad csv ($rc): $out"; fail=1; }
out=$("$replay" --trace=/nonexistent 2>&1); rc=$?
[[ $rc -eq 2 ]] && echo "ok   missing file" || { echo "FAIL missing file ($rc)"; fail=1; }
out=$("$replay" --trace="$TEST_TMPDIR/s.trace" --allocator=magic 2>&1); rc=$?
[[ $rc -eq 2 ]] && echo "ok   bad allocator" || { echo "FAIL bad allocator ($rc)"; fail=1; }
# Hostile input: each refusal names what was wrong.
: > "$TEST_TMPDIR/empty.trace"
out=$("$replay" --trace="$TEST_TMPDIR/empty.trace" 2>&1); rc=$?
[[ $rc -eq 2 ]] && grep -q "is empty (0 bytes)" <<<"$out" && echo "ok   empty file" || { echo "FAIL empty file ($rc): $out"; fail=1; }
out=$("$replay" --trace="$TEST_TMPDIR" 2>&1); rc=$?
[[ $rc -eq 2 ]] && grep -q "is a directory, not a trace file" <<<"$out" && echo "ok   directory" || { echo "FAIL directory ($rc): $out"; fail=1; }
for capacity in 0 15 17592186044432; do
  out=$("$replay" --trace="$TEST_TMPDIR/s.trace" --device_capacity_mb=$capacity 2>&1); rc=$?
  [[ $rc -eq 2 ]] && grep -q -- "--device_capacity_mb: $capacity is not in" <<<"$out" && echo "ok   capacity $capacity" || { echo "FAIL capacity $capacity ($rc): $out"; fail=1; }
done
# An absurd length is streamed, never held in memory: with a 256 MiB address
# space and a full disk it stops at the first failed write, quickly.
if [[ -z ${ASAN_OPTIONS:-} && -z ${TSAN_OPTIONS:-} ]]; then
  start=$SECONDS
  out=$( (ulimit -v 262144; "$gen" --events=99999999999999 --out=/dev/full) 2>&1); rc=$?
  if [[ $rc -eq 2 ]] && grep -q "No space left on device" <<<"$out" && (( SECONDS - start < 30 )); then
    echo "ok   huge --events streamed"
  else
    echo "FAIL huge --events ($rc, $((SECONDS - start)) s): $out"; fail=1
  fi
fi
out=$("$gen" --events=0 --out="$TEST_TMPDIR/z.trace" 2>&1); rc=$?
[[ $rc -eq 2 ]] && grep -q -- "--events must be positive" <<<"$out" && echo "ok   zero events" || { echo "FAIL zero events ($rc): $out"; fail=1; }
exit $fail
