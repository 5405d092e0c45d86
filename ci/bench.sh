#!/usr/bin/env bash
# Runs the benchmark suite (//harness/bench, -c opt) and prints its Markdown
# report: ns/op for every workload and allocator, the ratios to mimalloc and
# to std::pmr::synchronized_pool_resource, and the goals with what was
# measured. Extra arguments go to Google Benchmark (e.g. --benchmark_filter=).
#
#   ci/bench.sh                 # report to stdout
#   ci/bench.sh --update-docs   # also rewrite the measured sections of
#                               # docs/performance.md and docs/performance.svg
set -euo pipefail
source "$(dirname "$0")/lib.sh"

update_docs=0
args=()
for a in "$@"; do
  if [[ $a == --update-docs ]]; then update_docs=1; else args+=("$a"); fi
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$BAZELW" run -c opt //harness/bench -- --markdown="$work/report.md" --svg="$work/plot.svg" \
    ${args[@]+"${args[@]}"} >"$work/console.log" 2>&1 || {
  echo "bench: the suite failed:"; tail -40 "$work/console.log"; exit 1; }

machine="$(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores, \
$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), \
measured $(date -u +%Y-%m-%d)"
echo "Machine: $machine"
echo
cat "$work/report.md"

if (( update_docs )); then
  doc="$ROOT/docs/performance.md"
  python3 - "$doc" "$work/report.md" "$machine" <<'PY'
import re, sys
doc, report, machine = sys.argv[1], open(sys.argv[2]).read(), sys.argv[3]
text = open(doc).read()
def put(text, name, body):
    pattern = re.compile(r"(<!-- bench:%s -->\n).*?(<!-- /bench:%s -->)" % (name, name), re.S)
    if not pattern.search(text):
        sys.exit("bench: %s has no bench:%s markers" % (doc, name))
    return pattern.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), text)
text = put(text, "machine", machine)
text = put(text, "report", report)
open(doc, "w").write(text)
PY
  cp "$work/plot.svg" "$ROOT/docs/performance.svg"
  echo
  echo "bench: updated docs/performance.md and docs/performance.svg"
fi
