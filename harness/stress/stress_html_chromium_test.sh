#!/usr/bin/env bash
# Runs a short campaign with --report_html, then loads the page in a real
# headless Chromium: the DOM it renders must hold every plot with data in it,
# the page must pull nothing from the network, and the screenshot must not be
# blank.
set -u
bin="$TEST_SRCDIR/$TEST_WORKSPACE/harness/stress/stress"
chrome=$(command -v chromium || command -v chromium-browser || true)
if [[ -z "$chrome" ]]; then
  echo "FAIL: chromium is not installed; ./bazelw installs it (Debian package 'chromium')"
  exit 1
fi
html="$TEST_TMPDIR/report.html"
"$bin" --ops=4000 --threads=2 --device_capacity_mb=256 --max_size=2097152 --report_html="$html" \
  >"$TEST_TMPDIR/run.log" 2>&1 || { echo "FAIL: the campaign failed"; tail "$TEST_TMPDIR/run.log"; exit 1; }
fail=0
if grep -Eq '(src|href)="(https?:)?//' "$html"; then echo "FAIL: the page loads resources from the network"; fail=1; fi
flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
       --disable-component-update --disable-sync --disable-dev-shm-usage
       --user-data-dir="$TEST_TMPDIR/chrome-profile")
"$chrome" "${flags[@]}" --dump-dom "file://$html" >"$TEST_TMPDIR/dom.html" 2>"$TEST_TMPDIR/chrome.log"
if [[ ! -s "$TEST_TMPDIR/dom.html" ]]; then echo "FAIL: chromium rendered nothing"; tail "$TEST_TMPDIR/chrome.log"; exit 1; fi
python3 - "$TEST_TMPDIR/dom.html" <<'PY' || fail=1
import re, sys
dom = open(sys.argv[1]).read()
def section(svg_id):
    m = re.search(r'<svg[^>]*id="%s".*?</svg>' % svg_id, dom, re.S)
    return m.group(0) if m else None
ok = True
for svg_id, element, minimum in [("memory-plot", "polyline", 2), ("latency-plot", "rect", 5),
                                 ("fragmentation-plot", "polyline", 1), ("segment-map", "rect", 2)]:
    s = section(svg_id)
    if s is None:
        print(f"FAIL: #{svg_id} missing from the rendered page"); ok = False; continue
    n = len(re.findall(r"<%s\b" % element, s))
    if n < minimum:
        print(f"FAIL: #{svg_id} has {n} <{element}>, expected at least {minimum}"); ok = False; continue
    if element == "polyline":
        pts = re.findall(r'points="([^"]*)"', s)
        if not any(len(p.split()) >= 2 for p in pts):
            print(f"FAIL: #{svg_id} has no line with data"); ok = False; continue
    print(f"ok   #{svg_id}: {n} <{element}> rendered")
if "PASS: every invariant held" not in dom:
    print("FAIL: the result line is missing"); ok = False
sys.exit(0 if ok else 1)
PY
"$chrome" "${flags[@]}" --window-size=1000,1800 --screenshot="$TEST_TMPDIR/shot.png" "file://$html" \
  >/dev/null 2>>"$TEST_TMPDIR/chrome.log"
size=$(stat -c %s "$TEST_TMPDIR/shot.png" 2>/dev/null || echo 0)
if (( size < 20000 )); then echo "FAIL: screenshot is missing or blank ($size bytes)"; fail=1; else echo "ok   screenshot ($size bytes)"; fi
exit $fail
