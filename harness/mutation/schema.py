"""Mutant schemata: every mutant of a file compiled into one build.

Each mutant's range is rewritten to its schema form, in which
`gpualloc_mutant_on_(id)` picks the mutant's code when the environment
variable GPUALLOC_MUTANT equals its id and the original code otherwise. One
build of the schematised tree then serves every mutant: running a test with
GPUALLOC_MUTANT=17 runs it against mutant 17 alone.

Each schema is wrapped in marker comments (/*@m17{*/ ... /*}m17@*/) so that a
compiler error can be traced to the mutant whose code caused it; that mutant
is dropped (reported as "did not compile") and the build retried.
"""

import difflib
import re

PROLOGUE = (
    "#ifndef GPUALLOC_MUTATION_SCHEMA_  // GPUALLOC_MUTANT picks one mutant\n"
    "#define GPUALLOC_MUTATION_SCHEMA_\n"
    "#include <cstdlib>\n"
    "#include <optional>\n"
    "namespace { [[maybe_unused]] bool gpualloc_mutant_on_(int id) { "
    "static const int active = [] { const char* v = std::getenv(\"GPUALLOC_MUTANT\"); "
    "return v == nullptr ? 0 : std::atoi(v); }(); return active == id; } }\n"
    "#endif\n")

_MARK = re.compile(r"/\*@m(\d+)\{\*/|/\*\}m(\d+)@\*/")


def drop_overlaps(mutants):
    """Returns (kept, dropped): ranges must nest or be disjoint for a schema;
    a mutant whose range cuts another's is dropped."""
    ordered = sorted(mutants, key=lambda m: (m.path, m.start, m.start != m.end, -m.end, m.id))
    kept, dropped, stack = [], [], []
    for m in ordered:
        if stack and stack[-1].path != m.path:
            stack = []
        while stack and stack[-1].end <= m.start and not (
                stack[-1].end == m.start and stack[-1].start == m.start):
            stack.pop()
        if stack and m.end > stack[-1].end and m.start < stack[-1].end:
            dropped.append(m)
            continue
        kept.append(m)
        if m.end > m.start:
            stack.append(m)
    return kept, dropped


def render(src, mutants):
    """The schematised text of `src` (bytes) for `mutants` (non-overlapping,
    see drop_overlaps)."""
    # Offsets are bytes: slice the bytes, decode the pieces.
    groups = []
    for m in sorted(mutants, key=lambda m: (m.start, m.start != m.end, -m.end, m.id)):
        if groups and groups[-1][0] == (m.start, m.end):
            groups[-1][1].append(m)
        else:
            groups.append(((m.start, m.end), [m]))

    def emit(lo, hi, gs):
        out, pos, i = [], lo, 0
        while i < len(gs):
            (s, e), ms = gs[i]
            out.append(src[pos:s].decode())
            j = i + 1
            if e > s:
                while j < len(gs) and gs[j][0][0] < e:
                    j += 1
            inner = emit(s, e, gs[i + 1:j])
            for m in reversed(ms):
                check = "gpualloc_mutant_on_(%d)" % m.id
                inner = ("/*@m%d{*/" % m.id
                         + m.schema.replace("@CHECK@", check).replace("@INNER@", inner)
                         + "/*}m%d@*/" % m.id)
            out.append(inner)
            pos, i = max(pos, e), j
        out.append(src[pos:hi].decode())
        return "".join(out)

    return PROLOGUE + emit(0, len(src), groups)


def mutants_at_lines(schema_text, lines):
    """Ids of the innermost mutants whose schema spans any of `lines`
    (1-based lines of `schema_text`)."""
    spans, open_at = [], {}
    for match in _MARK.finditer(schema_text):
        line = schema_text.count("\n", 0, match.start()) + 1
        if match.group(1):
            open_at.setdefault(int(match.group(1)), []).append(line)
        else:
            mid = int(match.group(2))
            start = open_at[mid].pop()
            spans.append((start, line, mid))
    found = set()
    for line in lines:
        inside = [(end - start, mid) for start, end, mid in spans if start <= line <= end]
        if inside:
            found.add(min(inside)[1])
    return found


def apply_one(src, mutant):
    """The source with only `mutant` applied (for reports and single runs)."""
    return (src[:mutant.start] + mutant.replacement.encode() + src[mutant.end:]).decode()


def diff(src, mutant, context=1):
    before = src.decode().splitlines()
    after = apply_one(src, mutant).splitlines()
    return "\n".join(difflib.unified_diff(
        before, after, "a/" + mutant.path, "b/" + mutant.path, n=context, lineterm=""))
