"""The mutation report: report.json (every mutant) and report.md (scores per
component, file and rule; each survivor with its diff)."""

import collections
import json
import os

import schema as schema_lib

STATUSES = ("killed", "timed out", "survived", "no tests", "not compiled", "equivalent", "error")


def score(counts):
    """Detected / (every mutant that compiled and is not equivalent); a
    mutant no test covers counts against the score."""
    detected = counts["killed"] + counts["timed out"]
    judged = detected + counts["survived"] + counts["no tests"]
    return 100.0 * detected / judged if judged else 100.0


def component(path):
    parts = path.split("/")
    return "/".join(parts[:3]) if parts[1] == "backend" and len(parts) > 3 else "/".join(parts[:2])


def write(out, root, mutants, results, excluded_tests, meta):
    os.makedirs(out, exist_ok=True)
    sources = {}
    rows = []
    for m in mutants:
        r = results[m.id]
        if m.path not in sources:
            sources[m.path] = open(os.path.join(root, m.path), "rb").read()
        rows.append(dict(id=m.id, path=m.path, line=m.line, function=m.function, rule=m.rule,
                         diff=schema_lib.diff(sources[m.path], m), **r))

    def tally(key):
        table = collections.defaultdict(collections.Counter)
        for row in rows:
            table[key(row)][row["status"]] += 1
        return table

    total = collections.Counter(row["status"] for row in rows)
    summary = {s: total[s] for s in STATUSES}
    summary["score"] = round(score(total), 2)
    by_component, by_file, by_rule = tally(lambda r: component(r["path"])), \
        tally(lambda r: r["path"]), tally(lambda r: r["rule"])
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump({"meta": meta, "summary": summary,
                   "by_component": {k: dict(v, score=round(score(v), 2))
                                    for k, v in by_component.items()},
                   "excluded_tests": excluded_tests, "mutants": rows}, f, indent=1)

    def table(title, data):
        lines = ["## " + title, "",
                 "| | score | killed | timed out | survived | no tests | not compiled | equivalent |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for k in sorted(data):
            c = data[k]
            lines.append("| %s | %.1f%% | %d | %d | %d | %d | %d | %d |" % (
                k, score(c), c["killed"], c["timed out"], c["survived"], c["no tests"],
                c["not compiled"], c["equivalent"]))
        return lines + [""]

    md = ["# Mutation report", "",
          "Score **%.1f%%** over %d mutants (%s config; %s of %d generated; %d s)." % (
              summary["score"], len(rows), meta["config"],
              "sample of %d, seed %d" % (meta["sample"], meta["seed"]) if meta["sample"] else "all",
              meta["total_mutants"], meta["seconds"]),
          "Score = (killed + timed out) / (killed + timed out + survived + no tests).", ""]
    if meta.get("interrupted"):
        md += ["**Interrupted:** only the mutants that ran are counted.", ""]
    md += table("Per component", by_component)
    md += table("Per rule", by_rule)
    md += table("Per file", by_file)
    if excluded_tests:
        md += ["## Tests left out", ""] + ["- `%s`: %s" % kv for kv in sorted(excluded_tests.items())] + [""]
    survivors = [r for r in rows if r["status"] in ("survived", "no tests")]
    md += ["## Survivors (%d)" % len(survivors), ""]
    for r in survivors:
        md += ["### #%d %s in `%s` (%s:%d), %s" % (r["id"], r["rule"], r["function"], r["path"],
                                                   r["line"], r["status"]),
               "", "```diff", r["diff"], "```", ""]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(md))
    return summary
