#!/usr/bin/env bash
# End-to-end checks of the stress binary's contract: exit codes and output.
set -u
bin="$TEST_SRCDIR/$TEST_WORKSPACE/harness/stress/stress"
fail=0
check() {  # check NAME EXPECTED_EXIT GREP_PATTERN -- ARGS...
  local name=$1 want=$2 pattern=$3; shift 4
  local out; out=$("$bin" "$@" 2>&1); local got=$?
  if [[ $got -ne $want ]]; then
    echo "FAIL $name: exit $got, expected $want"; echo "$out" | tail -20; fail=1; return
  fi
  if ! grep -qE -- "$pattern" <<<"$out"; then
    echo "FAIL $name: output lacks /$pattern/"; echo "$out" | tail -20; fail=1; return
  fi
  echo "ok   $name"
}
check pass 0 "result +PASS" -- --ops=3000 --threads=2 --device_capacity_mb=256 --max_size=2097152 \
  --report_json="$TEST_TMPDIR/r.json"
grep -q '"ok":true' "$TEST_TMPDIR/r.json" || { echo "FAIL json: no ok:true"; fail=1; }
check planted-bug 1 "Reproduce with:" -- --ops=20000 --devices=1 --threads=2 --fault_rate=0 \
  --device_capacity_mb=256 --max_size=2097152 --inject_bug
check tracked 0 "result +PASS" -- --ops=3000 --threads=2 --device_capacity_mb=256 --max_size=2097152 \
  --track_leaks
check bad-number 2 "bad value for --threads" -- --threads=abc
check bad-range 2 "--fault_rate" -- --fault_rate=3
check unknown-flag 2 "unknown flag --frobnicate" -- --frobnicate=1
check bad-enum 2 "--sizes" -- --sizes=cubic
check bad-kind 2 "--fault_kinds" -- --fault_kinds=error,explode
check sticky 2 "sticky is a lost device" -- --fault_kinds=sticky
check trace-needed 2 "--trace" -- --sizes=trace
check bad-trace 2 "--trace: cannot read" -- --sizes=trace --trace=/nonexistent
check fifo-limit-kinds 0 "result +PASS" -- --ops=3000 --threads=2 --device_capacity_mb=256 \
  --max_size=2097152 --lifetime=fifo --limit_mb=64 --fault_rate=0.05 --fault_kinds=error,delay
# Hostile and careless command lines.
check inconclusive 3 "result +INCONCLUSIVE: only [0-9]+ of [0-9]+ allocation attempts" -- --ops=10 \
  --threads=1 --device_capacity_mb=256 --max_size=2097152 --fault_rate=0
check positional 2 "unexpected argument 'extra'" -- --ops=100 extra
check stray-dashes 2 "unexpected '--'" -- --ops=100 -- --threads=2
check space-form 0 "result +PASS" -- --ops 3000 --threads 2 --device_capacity_mb 256 --max_size 2097152
check duration-unused 0 "result +PASS" -- --ops=3000 --duration=1e12 --threads=2 \
  --device_capacity_mb=256 --max_size=2097152
check duration-used 2 "--duration: is longer than a week" -- --duration=1e12
start=$SECONDS
check unwritable-json 2 "--report_json: cannot write /nonexistent/dir/r.json" -- \
  --report_json=/nonexistent/dir/r.json --duration=30
check unwritable-html 2 "--report_html: cannot write" -- --report_html=/proc/r.html --duration=30
(( SECONDS - start < 20 )) || { echo "FAIL unwritable: the paths were checked only after the run"; fail=1; }
check wrapping-limit 2 "--limit_mb: 17592186044432 MiB does not fit" -- --limit_mb=17592186044432
# More streams than the machine gives threads for (a virtual-memory limit
# makes thread creation fail even for root): exit 2 and say so, never abort.
# Not under the sanitizers, whose shadow memory needs the address space.
if [[ -z ${ASAN_OPTIONS:-} && -z ${TSAN_OPTIONS:-} ]]; then
  out=$( (ulimit -v 2000000; "$bin" --devices=64 --streams=64 --threads=8 --ops=100 \
          --device_capacity_mb=64 --max_size=1048576) 2>&1); got=$?
  if [[ $got -eq 2 ]] && grep -q "cannot run: simErrorOutOfResources: cannot start the worker thread" <<<"$out"; then
    echo "ok   too-many-streams"
  else
    echo "FAIL too-many-streams: exit $got"; echo "$out" | tail -5; fail=1
  fi
fi
exit $fail
