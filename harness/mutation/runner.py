"""Runs mutants against the test suite and reports which ones the tests kill.

The working tree is copied into a scratch tree (the checkout is never
touched); the files holding the chosen mutants are replaced there by their
schemata (schema.py); one Bazel build serves them all. Each mutant then runs
the default-config tests that depend on its file, selected by GPUALLOC_MUTANT:
first the tests of the file's own package, then the rest, stopping at the
first failure. A mutant is

  killed       a test failed
  timed out    no test failed but one ran past the per-test limit (a hang)
  survived     every covering test passed
  no tests     no default-config test depends on its file
  not compiled the compiler rejected it (dropped from the schema)

and the score is (killed + timed out) / (all - not compiled - equivalent).
"""

import functools
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import mutants as mutants_lib
import report
import schema as schema_lib

HERE = os.path.dirname(os.path.abspath(__file__))
TOOL_VERSION = hashlib.sha1(b"".join(
    open(os.path.join(HERE, f), "rb").read() for f in ("mutants.py",))).hexdigest()[:12]

# Sources under allocator/ that are not the product, with the reason.
EXCLUDED = {
    "allocator/backend/testing/": "the backend contract suite: test code",
    "allocator/backend/failpoints/": "the fault-injection backend: test harness",
    "allocator/backend/cuda/": "needs a CUDA device: covered by the `gpu` tests only",
    "allocator/backend/hip/": "needs a HIP device: covered by the `gpu` tests only",
    "allocator/host/host_only_backend_for_test.h": "test helper",
    "allocator/context/leak_at_exit_example.cc": "example program for a test",
}


# Rules whose mutants may only show as a data race.
CONCURRENCY_RULES = ("drop-lock",)


def log(*args):
    print(*args, flush=True)


def source_files(root, paths):
    listed = subprocess.check_output(
        ["git", "ls-files", "-co", "--exclude-standard", "--"] + paths, cwd=root, text=True)
    out = []
    for rel in listed.split():
        if not rel.endswith((".cc", ".h")) or re.search(r"_test\.(cc|h)$", rel):
            continue
        if not rel.startswith("allocator/"):
            continue
        if any(rel.startswith(prefix) for prefix in EXCLUDED):
            continue
        if os.path.exists(os.path.join(root, rel)):
            out.append(rel)
    return sorted(out)


def generate(root, files, cache_dir):
    """All mutants of `files`, ids assigned in a stable order. Parsing is
    cached by file content and tool version."""
    os.makedirs(cache_dir, exist_ok=True)
    found = []
    for rel in files:
        data = open(os.path.join(root, rel), "rb").read()
        key = hashlib.sha1(data + TOOL_VERSION.encode() + rel.encode()).hexdigest()
        cached = os.path.join(cache_dir, key + ".json")
        if os.path.exists(cached):
            ms = [mutants_lib.Mutant(**d) for d in json.load(open(cached))]
        else:
            ms = mutants_lib.find_mutants(root, rel)
            json.dump([m.__dict__ for m in ms], open(cached, "w"))
        found.extend(ms)
    found.sort(key=lambda m: (m.path, m.start, m.end, m.rule, m.replacement))
    for i, m in enumerate(found, 1):
        m.id = i
    return found


def sample(mutants, n, seed):
    """`n` mutants picked by a hash of (seed, what each mutant is): an edit
    elsewhere in the code leaves the picks of unchanged code as they were, so
    a sample's score moves only with the code and tests it covers."""
    def rank(m):
        key = "%d|%s|%s|%s|%s" % ((seed,) + m.key())
        return hashlib.sha1(key.encode()).hexdigest(), m.id
    return sorted(sorted(mutants, key=rank)[:n], key=lambda m: m.id)


def load_equivalents(path):
    """Lines `path | function | rule | text  # reason` (function `*`: any);
    `text` must occur in the mutant's source line followed by
    ` :: original => replacement`."""
    entries = []
    if not os.path.exists(path):
        return entries
    for raw in open(path):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [p.strip() for p in line.split(" | ", 3)]
        if len(parts) != 4:
            raise SystemExit("%s: malformed line: %s" % (path, raw.rstrip()))
        reason = raw.split("#", 1)[1].strip() if "#" in raw else ""
        if not reason:
            raise SystemExit("%s: every equivalent mutant needs a reason: %s" % (path, raw.rstrip()))
        entries.append(parts + [reason])
    return entries


@functools.lru_cache(maxsize=None)
def _source_lines(root, path):
    # Read once per run: the staleness check asks for every mutant.
    with open(os.path.join(root, path)) as f:
        return f.read().split("\n")


def equivalent_reason(m, entries, root):
    for path, function, rule, text, reason in entries:
        if m.path == path and function in (m.function, "*") and m.rule == rule:
            line = _source_lines(root, m.path)[m.line - 1].strip()
            if text in line + " :: " + m.original_text_key:
                return reason
    return None


def sync_tree(root, tree):
    """Makes `tree` a copy of the working tree (tracked and untracked, not
    ignored files), rewriting only what changed so Bazel's cache holds."""
    os.makedirs(tree, exist_ok=True)
    listed = subprocess.check_output(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root).split(b"\0")
    wanted = set()
    for rel in (p.decode() for p in listed if p):
        src = os.path.join(root, rel)
        if not os.path.isfile(src) or os.path.islink(src):
            continue
        wanted.add(rel)
        dst = os.path.join(tree, rel)
        data = open(src, "rb").read()
        if os.path.exists(dst) and open(dst, "rb").read() == data:
            continue
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(dst, "wb") as f:
            f.write(data)
        shutil.copymode(src, dst)
    for dirpath, dirnames, filenames in os.walk(tree):
        rel_dir = os.path.relpath(dirpath, tree)
        dirnames[:] = [d for d in dirnames
                       if not (rel_dir == "." and (d.startswith("bazel-") or d == ".git"))]
        for name in filenames:
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if rel not in wanted:
                os.remove(os.path.join(dirpath, name))


class Bazel:
    def __init__(self, tree, config):
        self.tree = tree
        self.flags = ["--config=ci"] + (["--config=" + config] if config else [])

    def run(self, verb, *args, timeout=None):
        cmd = [os.path.join(self.tree, "bazelw"), verb] + self.flags + list(args)
        p = subprocess.run(cmd, cwd=self.tree, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=timeout)
        return p.returncode, p.stdout

    def query(self, expr):
        cmd = [os.path.join(self.tree, "bazelw"), "query", "--output=label", expr]
        p = subprocess.run(cmd, cwd=self.tree, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            raise SystemExit("bazel query failed: %s\n%s" % (expr, p.stderr[-2000:]))
        return [l for l in p.stdout.split() if l.startswith("//")]

    def test(self, targets, mutant_id, per_test_timeout):
        """{target: PASSED|FAILED|TIMEOUT|...} for one mutant."""
        rc, out = self.run(
            "test", "--nocache_test_results", "--test_output=summary",
            "--test_timeout=%d" % per_test_timeout, "--test_env=GPUALLOC_MUTANT=%d" % mutant_id,
            "--keep_going", *targets)
        results = {}
        for line in out.splitlines():
            m = re.match(r"^(//\S+)\s+(?:\(cached\)\s+)?(PASSED|FAILED|TIMEOUT|FLAKY|NO STATUS|"
                         r"FAILED TO BUILD|INCOMPLETE)\b(?:.*? in ([\d.]+)s)?", line)
            if m:
                results[m.group(1)] = (m.group(2), float(m.group(3) or 0))
        if not results:
            results["<bazel>"] = ("ERROR rc=%d: %s" % (rc, out[-1500:]), 0.0)
        return results


def label_of(rel):
    pkg, name = os.path.split(rel)
    return "//%s:%s" % (pkg, name)


def run_mutant(bazel, m, tests, test_timeout):
    """Runs mutant `m`'s covering `tests`: its own package's first, the rest
    only if those all pass."""
    pkg = "//" + os.path.dirname(m.path) + ":"
    phases = [[t for t in tests if t.startswith(pkg)], [t for t in tests if not t.startswith(pkg)]]
    t0 = time.time()
    outcome = {"status": "no tests", "tests_run": 0}
    for phase in phases:
        if not phase:
            continue
        res = bazel.test(phase, m.id, test_timeout)
        outcome["tests_run"] += len(res)
        failed = sorted(t for t, (s, _) in res.items() if s in ("FAILED", "FAILED TO BUILD",
                                                                 "INCOMPLETE", "NO STATUS"))
        timed = sorted(t for t, (s, _) in res.items() if s == "TIMEOUT")
        if "<bazel>" in res:
            outcome = {"status": "error", "reason": res["<bazel>"][0]}
            break
        if failed:
            outcome.update(status="killed", by=failed)
            break
        if timed:
            outcome.update(status="timed out", by=timed)
            break
        outcome["status"] = "survived"
    outcome["seconds"] = round(time.time() - t0, 1)
    return outcome


def covering_tests(bazel, paths, concurrency_only):
    """{path: the default-config tests that depend on it}."""
    excluded_by_tag = "attr(tags, 'gpu|manual', tests(//...))"
    covering = {}
    for rel in sorted(paths):
        expr = "tests(rdeps(//..., %s)) except %s" % (label_of(rel), excluded_by_tag)
        if concurrency_only:
            expr = "attr(tags, concurrency, %s)" % expr
        covering[rel] = bazel.query(expr)
    return covering


def left_out(bazel, tests, test_timeout, slow_test=None):
    """Runs `tests` once with no mutant: {test: why} for each a mutant run
    must leave out, because it fails already or (given `slow_test`) takes
    longer than that many seconds."""
    out = {}
    for t, (status, secs) in bazel.test(tests, 0, test_timeout * 3).items():
        if status != "PASSED":
            out[t] = "fails without a mutant: " + status[:200]
        elif slow_test is not None and secs > slow_test:
            out[t] = "too slow for a mutant run (%.0f s)" % secs
    return out


def tsan_second_chance(tree, chosen, results, test_timeout):
    """Concurrency mutants (a dropped lock) that survived the default run are
    run again under TSan, over the `concurrency`-tagged tests that cover them:
    those suites must catch what only a race detector sees."""
    again = [m for m in chosen if m.rule in CONCURRENCY_RULES
             and results[m.id]["status"] == "survived"]
    if not again:
        return
    tsan = Bazel(tree, "tsan")
    covering = covering_tests(tsan, {m.path for m in again}, True)
    tests = sorted({t for ts in covering.values() for t in ts})
    log("mutation: %d concurrency survivors; building %d TSan tests" % (len(again), len(tests)))
    if not tests:
        return
    rc, out = tsan.run("build", "--keep_going", *tests)
    if rc != 0:
        log("mutation: the TSan build failed; no second chance:\n" + out[-3000:])
        return
    flaky = left_out(tsan, tests, test_timeout)
    for t, why in sorted(flaky.items()):
        log("  left out under TSan %s: %s" % (t, why))
    for m in again:
        outcome = run_mutant(tsan, m, [t for t in covering[m.path] if t not in flaky], test_timeout)
        log("  tsan #%d %s %s:%d: %s %s" % (m.id, m.rule, m.path, m.line, outcome["status"],
                                           ",".join(outcome.get("by", []))))
        if outcome["status"] in ("killed", "timed out"):
            outcome["by"] = ["tsan " + t for t in outcome["by"]]
            results[m.id] = outcome


def write_schemata(root, tree, chosen, files):
    """Writes the schema of each of `files` holding chosen mutants, and the
    original of each that holds none (any more)."""
    by_file = {rel: [] for rel in files}
    for m in chosen:
        by_file[m.path].append(m)
    texts = {}
    for rel, ms in by_file.items():
        src = open(os.path.join(root, rel), "rb").read()
        texts[rel] = schema_lib.render(src, ms) if ms else src.decode()
        with open(os.path.join(tree, rel), "w") as f:
            f.write(texts[rel])
    return texts


def build_schemata(root, tree, bazel, chosen, targets):
    """Builds the schematised tree; drops mutants the compiler rejects.
    Returns (built mutants, not compiled mutants)."""
    not_compiled = []
    files = sorted({m.path for m in chosen})
    for attempt in range(12):
        texts = write_schemata(root, tree, chosen, files)
        rc, out = bazel.run("build", "--keep_going", *targets)
        if rc == 0:
            return chosen, not_compiled
        lines = {}
        for m in re.finditer(r"^(?:\./)?(allocator/[\w/.]+):(\d+):\d+: (?:error|note|warning)", out, re.M):
            if m.group(1) in texts:
                lines.setdefault(m.group(1), set()).add(int(m.group(2)))
        bad = set()
        for rel, ls in lines.items():
            bad |= schema_lib.mutants_at_lines(texts[rel], ls)
        if not bad:
            raise SystemExit("the schematised tree does not build, and no mutant is to blame:\n"
                             + out[-6000:])
        log("  build attempt %d: %d mutants do not compile; dropped" % (attempt + 1, len(bad)))
        not_compiled += [m for m in chosen if m.id in bad]
        chosen = [m for m in chosen if m.id not in bad]
    raise SystemExit("the schematised tree still does not build after 12 attempts")


def _interrupt(*_):
    raise KeyboardInterrupt()


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(prog="ci/mutation.sh", description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="*", default=["allocator/"])
    ap.add_argument("--sample", type=int, default=0, help="run N mutants picked by --seed")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ids", default="", help="comma-separated mutant ids to run")
    ap.add_argument("--rules", default="", help="comma-separated rules to keep")
    ap.add_argument("--threshold", type=float, default=0.0,
                    help="exit non-zero when the score (percent) is below this")
    ap.add_argument("--config", default="", help="a Bazel config to build and test under, "
                    "e.g. tsan (then only `concurrency`-tagged tests run)")
    ap.add_argument("--no-tsan", action="store_true",
                    help="no second run under TSan for surviving concurrency mutants")
    ap.add_argument("--test-timeout", type=int, default=60, help="seconds per test (default 60)")
    ap.add_argument("--slow-test", type=float, default=30.0,
                    help="tests whose unmutated run takes longer are left out (default 30 s)")
    ap.add_argument("--out", default="mutation-report")
    ap.add_argument("--tree", default=os.path.expanduser("~/.cache/gpualloc/mutation/tree"))
    ap.add_argument("--list", action="store_true", help="list the mutants and stop")
    args = ap.parse_args(argv)
    if args.sample < 0:
        ap.error("--sample must be 0 (every mutant) or more, got %d" % args.sample)
    if not 0 <= args.threshold <= 100:
        ap.error("--threshold is a percentage in [0, 100], got %g" % args.threshold)
    if args.test_timeout <= 0:
        ap.error("--test-timeout must be positive, got %d" % args.test_timeout)
    if args.config not in ("", "tsan", "asan"):
        ap.error("--config must be tsan or asan (or absent), got %r" % args.config)
    try:
        wanted_ids = {int(x) for x in args.ids.split(",")} if args.ids else set()
    except ValueError:
        ap.error("--ids takes comma-separated numbers, got %r" % args.ids)

    root = subprocess.check_output(["git", "rev-parse", "--show-toplevel"], cwd=HERE, text=True).strip()
    files = source_files(root, args.paths)
    if not files:
        raise SystemExit("no product sources under %s" % " ".join(args.paths))
    log("mutation: generating mutants for %d files" % len(files))
    everything = generate(root, files, os.path.join(os.path.dirname(args.tree), "mutants-cache"))
    if args.rules:
        keep = set(args.rules.split(","))
        unknown = keep - set(mutants_lib.RULES)
        if unknown:
            raise SystemExit("unknown rules: %s (known: %s)" % (
                ", ".join(sorted(unknown)), ", ".join(mutants_lib.RULES)))
        everything = [m for m in everything if m.rule in keep]
    equivalents = load_equivalents(os.path.join(HERE, "equivalent.txt"))
    if args.paths == ["allocator/"]:
        # Over every source, an entry that matches no mutant is stale: the
        # code it described changed, and the claim must be made again.
        stale = [e for e in equivalents
                 if not any(equivalent_reason(m, [e], root) for m in everything)]
        if stale:
            raise SystemExit("harness/mutation/equivalent.txt: %d entries match no mutant any "
                             "more (the code changed; check them again):\n  %s" % (
                                 len(stale), "\n  ".join(" | ".join(e[:4]) for e in stale)))
    chosen = everything
    if wanted_ids:
        chosen = [m for m in everything if m.id in wanted_ids]
        missing = wanted_ids - {m.id for m in chosen}
        if missing:
            raise SystemExit("no mutant has id %s (see --list)" % ", ".join(map(str, sorted(missing))))
    elif args.sample:
        chosen = sample(everything, args.sample, args.seed)
    if args.list:
        for m in chosen:
            log("%5d %-16s %s:%d %s" % (m.id, m.rule, m.path, m.line, m.function))
        return 0

    results = {}
    for m in chosen:
        reason = equivalent_reason(m, equivalents, root)
        if reason:
            results[m.id] = {"status": "equivalent", "reason": reason}
    chosen = [m for m in chosen if m.id not in results]
    chosen, overlapping = schema_lib.drop_overlaps(chosen)
    for m in overlapping:
        results[m.id] = {"status": "not compiled", "reason": "overlaps another mutant's range"}

    picked = ("ids" if wanted_ids else "sample seed %d" % args.seed if args.sample else "all")
    log("mutation: %d mutants chosen of %d (%s); scratch tree %s" % (
        len(chosen), len(everything), picked, args.tree))
    start = time.time()
    sync_tree(root, args.tree)
    bazel = Bazel(args.tree, args.config)

    # The tests that cover each file, in the configuration under test.
    covering = covering_tests(bazel, {m.path for m in chosen}, args.config == "tsan")
    all_tests = sorted({t for ts in covering.values() for t in ts})
    log("mutation: %d covering tests; building the schemata" % len(all_tests))
    chosen, bad = build_schemata(root, args.tree, bazel, chosen, all_tests or ["//allocator/..."])
    for m in bad:
        results[m.id] = {"status": "not compiled", "reason": "rejected by the compiler"}
    log("mutation: built in %.0f s; baseline run (no mutant)" % (time.time() - start))
    excluded_tests = (left_out(bazel, all_tests, args.test_timeout, args.slow_test)
                      if all_tests else {})
    if "<bazel>" in excluded_tests:
        raise SystemExit("baseline run failed: " + excluded_tests["<bazel>"])
    for t, why in sorted(excluded_tests.items()):
        log("  left out %s: %s" % (t, why))

    # SIGTERM (a CI limit) or Ctrl-C stops the run; what has run is reported.
    signal.signal(signal.SIGTERM, _interrupt)
    interrupted = False
    try:
        for n, m in enumerate(chosen, 1):
            outcome = run_mutant(bazel, m, [t for t in covering[m.path] if t not in excluded_tests],
                                 args.test_timeout)
            results[m.id] = outcome
            log("[%d/%d] #%d %s %s:%d %s: %s %s (%.0f s)" % (
                n, len(chosen), m.id, m.rule, m.path, m.line, m.function, outcome["status"],
                ",".join(outcome.get("by", [])), outcome["seconds"]))
        if not args.config and not args.no_tsan:
            tsan_second_chance(args.tree, chosen, results, args.test_timeout)
    except KeyboardInterrupt:
        interrupted = True
        log("mutation: interrupted; the report holds the mutants that ran")

    all_chosen = {m.id: m for m in everything}
    summary = report.write(args.out, root, [all_chosen[i] for i in sorted(results)], results,
                           excluded_tests, {"config": args.config or "default",
                                            "sample": args.sample, "seed": args.seed,
                                            "paths": args.paths,
                                            "seconds": round(time.time() - start),
                                            "total_mutants": len(everything),
                                            "interrupted": interrupted})
    log("mutation: score %.1f%% (%d killed, %d timed out, %d survived, %d no tests, "
        "%d not compiled, %d equivalent); report in %s" % (
            summary["score"], summary["killed"], summary["timed out"], summary["survived"],
            summary["no tests"], summary["not compiled"], summary["equivalent"], args.out))
    errors = [i for i, r in results.items() if r["status"] == "error"]
    if errors:
        log("mutation: FAIL: Bazel could not run the tests of mutants %s" % errors)
        return 1
    if summary["score"] < args.threshold:
        log("mutation: FAIL: score %.1f%% is below the threshold %.1f%%" % (
            summary["score"], args.threshold))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
