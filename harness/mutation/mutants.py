"""Finds the mutants of a C++ source file: one small, realistic bug each.

The file is parsed with libclang (Debian's python3-clang-14); every rule below
looks at the AST and proposes text edits. A mutant is a byte range of the file
and the text that replaces it, plus `schema(check, inner)`, the form that
compiles *every* mutant of a file into one build, switched at run time (see
schema.py).

Rules (the bugs they model):
  delete-call      a call statement removed: a missing record/wait/sync,
                   refund, erase, notify, unlock
  drop-lock        a MutexLock / std::lock_guard / unused ReleasableMutexLock or std::unique_lock that no
                   longer locks: a dropped lock around shared state
  negate-condition if/while/for/?: conditions inverted
  relax-condition  one side of && or || dropped: a missing check
  boundary         < <= > >= moved by one: an off-by-one comparison
  off-by-one       +1/-1 on integer and pointer arithmetic, += and -=
  unchecked-math   CheckedAdd/CheckedMul/CheckedRoundUp without the check
  swap-min-max     std::min <-> std::max
  ok-early         a Status function that returns OkStatus() at entry
  error-to-ok      a Status function's error return replaced by OkStatus()
  ignore-error     GPUALLOC_RETURN_IF_ERROR(e) evaluating e but ignoring it
  drop-boundary    a catch handler that rethrows: an exception boundary gone
"""

import dataclasses
import os
import re

import clang.cindex as ci

_LIBCLANG = "/usr/lib/llvm-14/lib/libclang-14.so.1"
if not ci.Config.loaded:
    ci.Config.set_library_file(_LIBCLANG)

K = ci.CursorKind

RULES = (
    "delete-call", "drop-lock", "negate-condition", "relax-condition", "boundary",
    "off-by-one", "unchecked-math", "swap-min-max", "ok-early", "error-to-ok",
    "ignore-error", "drop-boundary",
)


@dataclasses.dataclass
class Mutant:
    path: str          # repository-relative
    rule: str
    start: int         # byte offsets of the replaced range
    end: int
    replacement: str   # what the range holds in this mutant
    line: int
    function: str
    # The schema form: a format string with @CHECK@ (an expression true when
    # this mutant is active) and @INNER@ (the original range, itself holding
    # the schemata of any mutants nested in it).
    schema: str
    id: int = 0

    def key(self):
        """Stable identity, independent of ids and of edits elsewhere."""
        return (self.path, self.function, self.rule, self.original_text_key)

    original_text_key: str = ""


def _in_file(cursor, path):
    ext = cursor.extent
    return (ext.start.file is not None and ext.end.file is not None
            and ext.start.file.name == path and ext.end.file.name == path)


class _FileMutator:
    def __init__(self, path, rel, source, tu):
        self.path = path
        self.rel = rel
        self.src = source          # bytes
        self.tu = tu
        self.mutants = []
        # Macro invocations: (start, end, args_start) byte offsets.
        self.macros = []
        for c in tu.cursor.get_children():
            if c.kind == K.MACRO_INSTANTIATION and _in_file(c, path):
                s, e = c.extent.start.offset, c.extent.end.offset
                text = self.src[s:e]
                paren = text.find(b"(")
                self.macros.append((s, e, s + paren + 1 if paren >= 0 else e, c.spelling))

    # --- helpers -------------------------------------------------------------
    def text(self, s, e):
        return self.src[s:e].decode()

    def rng(self, c):
        return c.extent.start.offset, c.extent.end.offset

    def clean(self, s, e):
        """True if [s, e) can be rewritten as text: it never cuts a macro
        invocation, and does not lie in a macro's body (only in its arguments)."""
        for ms, me, args, _ in self.macros:
            if e <= ms or s >= me:
                continue                      # disjoint
            if s <= ms and e >= me:
                continue                      # covers the whole invocation
            if s >= args and e <= me - 1:
                continue                      # inside the arguments
            return False
        return True

    def add(self, rule, s, e, replacement, schema, function):
        line = self.src.count(b"\n", 0, s) + 1
        original = self.text(s, e)
        self.mutants.append(Mutant(
            path=self.rel, rule=rule, start=s, end=e, replacement=replacement,
            line=line, function=function, schema=schema,
            original_text_key=re.sub(r"\s+", " ", original + " => " + replacement)))

    # --- traversal -----------------------------------------------------------
    def run(self):
        self._walk(self.tu.cursor, "", None)
        # One mutant per (range, replacement): a node reached twice counts once.
        seen, unique = set(), []
        for m in self.mutants:
            k = (m.start, m.end, m.rule, m.replacement)
            if k not in seen:
                seen.add(k)
                unique.append(m)
        return unique

    def _walk(self, cursor, function, func):
        for c in cursor.get_children():
            if c.location.file is None or c.location.file.name != self.path:
                continue
            fn, fc = function, func
            if c.kind in (K.FUNCTION_DECL, K.CXX_METHOD, K.CONSTRUCTOR, K.DESTRUCTOR,
                          K.FUNCTION_TEMPLATE, K.LAMBDA_EXPR, K.CONVERSION_FUNCTION):
                if c.kind != K.LAMBDA_EXPR:
                    fn = c.spelling
                    parent_cls = c.semantic_parent
                    if parent_cls is not None and parent_cls.kind in (
                            K.CLASS_DECL, K.STRUCT_DECL, K.CLASS_TEMPLATE):
                        fn = parent_cls.spelling + "::" + fn
                fc = c                        # returns inside a lambda are its own
                if c.kind != K.LAMBDA_EXPR and c.is_definition():
                    self._function(c, fn)
            if c.kind == K.STATIC_ASSERT:
                continue
            if not self.from_macro_body(c):
                self._visit(c, fn, fc)
            self._walk(c, fn, fc)

    def _function(self, c, fn):
        """Rules on whole functions: ok-early, error-to-ok."""
        if not _returns_status(c):
            return
        body = next((ch for ch in c.get_children() if ch.kind == K.COMPOUND_STMT), None)
        if body is None or not _in_file(body, self.path):
            return
        s = body.extent.start.offset + 1      # just inside the brace
        self.add("ok-early", s, s, " return absl::OkStatus(); ",
                 "if (@CHECK@) return absl::OkStatus(); @INNER@", fn)

    def from_macro_body(self, c):
        """True for a node a macro's body wrote (its text is the invocation,
        not the node), as opposed to one written in a macro's arguments."""
        s, e = self.rng(c)
        return any(ms <= s and e <= me and s < args for ms, me, args, _ in self.macros)

    def _visit(self, c, fn, func):
        kind = c.kind
        if not fn:
            return                            # only code inside functions
        if kind == K.COMPOUND_STMT:
            for st in c.get_children():
                self._statement(st, fn, c)
        elif kind in (K.IF_STMT, K.WHILE_STMT, K.FOR_STMT, K.DO_STMT,
                      K.CONDITIONAL_OPERATOR):
            cond = _condition(c)
            if cond is not None:
                self._condition(cond, fn)
        elif kind == K.BINARY_OPERATOR:
            self._binary(c, fn)
        elif kind == K.COMPOUND_ASSIGNMENT_OPERATOR:
            self._compound_assign(c, fn)
        elif kind == K.CALL_EXPR:
            self._call(c, fn)
        elif kind == K.RETURN_STMT:
            self._return(c, fn, func)
        elif kind == K.CXX_CATCH_STMT:
            body = next((ch for ch in c.get_children() if ch.kind == K.COMPOUND_STMT), None)
            if body is not None and _in_file(body, self.path):
                s = body.extent.start.offset + 1
                self.add("drop-boundary", s, s, " throw; ",
                         "if (@CHECK@) throw; @INNER@", fn)

    # --- statement rules -----------------------------------------------------
    def _statement(self, st, fn, compound):
        if not _in_file(st, self.path):
            return
        s, e = self.rng(st)
        text = self.text(s, e)
        end = _statement_end(self.src, e)
        if end is None:
            return
        if text.startswith("GPUALLOC_RETURN_IF_ERROR("):
            arg = text[len("GPUALLOC_RETURN_IF_ERROR("):].rstrip()
            if arg.endswith(")"):
                arg = arg[:-1]
                self.add("ignore-error", s, end, "(void)(" + arg + ");",
                         "if (@CHECK@) { (void)(" + (arg) + "); } else { @INNER@ }", fn)
            return
        if st.kind == K.DECL_STMT:
            self._lock(st, s, end, fn, compound)
            return
        if not self.clean(s, end):
            return
        expr = _strip_unexposed(st)
        if expr is not None and expr.kind == K.CALL_EXPR and st.kind in (
                K.CALL_EXPR, K.UNEXPOSED_EXPR):
            # operator= on a class is a call too; that is an assignment, not a
            # call statement: keep it out.
            if expr.spelling.startswith("operator") and expr.spelling not in ("operator()",):
                return
            self.add("delete-call", s, end, "", "if (!(@CHECK@)) { @INNER@ }", fn)

    def _lock(self, st, s, end, fn, compound):
        var = next((ch for ch in st.get_children() if ch.kind == K.VAR_DECL), None)
        if var is None:
            return
        tname = var.type.spelling
        text = self.text(s, end)
        # Our annotated scoped locks (allocator/common/mutex.h) over gpualloc::Mutex.
        om = re.match(r"^(?:const )?(?:gpualloc::)?(MutexLock|ReleasableMutexLock)$", tname)
        if om:
            am = re.match(r"^\s*((?:gpualloc::)?\w+)\s+(\w+)\s*\(([^,;]*)\)\s*;$", text, re.S)
            if not am or am.group(2) != var.spelling:
                return
            if _referenced_after(compound, st, var):
                return                       # Unlock()/Lock() on it
            # Gone alone; in the schema, the same lock type, taken or not, so
            # the original path runs the scoped lock's own code unchanged.
            lock_type, name, mutex = am.group(1), am.group(2), am.group(3)
            self.add("drop-lock", s, end, "",
                     "std::optional<%s> %s; if (!(@CHECK@)) %s.emplace(%s);"
                     % (lock_type, name, name, mutex), fn)
            return
        else:
            m = re.match(r"^(?:const )?std::(lock_guard|unique_lock|scoped_lock)<(.+)>$", tname)
            if not m:
                return
            kind = m.group(1)
            am = re.match(r"^\s*std::\w+<([^;<>]+)>\s+(\w+)\s*\(([^,;]*)\)\s*;$", text, re.S)
            if not am or am.group(2) != var.spelling:
                return
            mutex_type, name, mutex = am.group(1), am.group(2), am.group(3)
        if kind == "unique_lock" and _referenced_after(compound, st, var):
            return                           # unlock()/wait() on it would throw
        decl = "std::unique_lock<%s> %s(%s, std::defer_lock);" % (mutex_type, name, mutex)
        self.add("drop-lock", s, end, decl,
                 decl + " if (!(@CHECK@)) " + name + ".lock();", fn)

    # --- expression rules ----------------------------------------------------
    def _condition(self, cond, fn):
        if not _in_file(cond, self.path):
            return
        s, e = self.rng(cond)
        if not self.clean(s, e) or s == e:
            return
        self.add("negate-condition", s, e, "!(" + self.text(s, e) + ")",
                 "(static_cast<bool>(@INNER@) != (@CHECK@))", fn)

    def _operator(self, c):
        """(lhs, op, rhs, op_start) for a builtin binary operator, or None."""
        ch = list(c.get_children())
        if len(ch) != 2 or not all(_in_file(x, self.path) for x in ch):
            return None
        lhs, rhs = ch
        ls, le = self.rng(lhs)
        rs, re_ = self.rng(rhs)
        between = self.src[le:rs]
        op = between.decode().strip()
        if not op or "/*" in op or "//" in op:
            return None
        return lhs, op, rhs, le + between.find(op.encode())

    def _binary(self, c, fn):
        parts = self._operator(c)
        if parts is None:
            return
        lhs, op, rhs, op_at = parts
        s, e = self.rng(c)
        if not self.clean(s, e):
            return
        ls, le = self.rng(lhs)
        rs, re_ = self.rng(rhs)
        if not (self.clean(ls, le) and self.clean(rs, re_)):
            return
        whole = self.text(s, e)
        new_op = {"<": "<=", "<=": "<", ">": ">=", ">=": ">"}.get(op)
        if new_op:
            rep = self.text(s, op_at) + new_op + self.text(op_at + len(op), e)
            self.add("boundary", s, e, rep,
                     "((@CHECK@) ? (" + (rep) + ") : (@INNER@))", fn)
        elif op in ("&&", "||"):
            lt, rt = self.text(ls, le), self.text(rs, re_)
            self.add("relax-condition", s, e, lt,
                     "((@CHECK@) ? static_cast<bool>(" + (lt) + ") : (@INNER@))", fn)
            self.add("relax-condition", s, e, rt,
                     "((@CHECK@) ? static_cast<bool>(" + (rt) + ") : (@INNER@))", fn)
        elif op in ("+", "-") and _arithmetic(c.type):
            delta = " - 1" if op == "+" else " + 1"
            rep = "(" + whole + ")" + delta
            self.add("off-by-one", s, e, rep,
                     "((@CHECK@) ? ((" + (whole) + ")" + delta + ") : (@INNER@))", fn)

    def _compound_assign(self, c, fn):
        parts = self._operator(c)
        if parts is None:
            return
        lhs, op, rhs, _ = parts
        if op not in ("+=", "-=") or not _arithmetic(lhs.type):
            return
        rs, re_ = self.rng(rhs)
        if not self.clean(rs, re_) or rs == re_:
            return
        rt = self.text(rs, re_)
        self.add("off-by-one", rs, re_, "(" + rt + ") + 1",
                 "((@CHECK@) ? ((" + (rt) + ") + 1) : (@INNER@))", fn)

    def _call(self, c, fn):
        name = c.spelling
        s, e = self.rng(c)
        if not _in_file(c, self.path) or not self.clean(s, e):
            return
        text = self.text(s, e)
        if name in ("min", "max") and re.match(r"^std::(min|max)\b", text):
            other = "max" if name == "min" else "min"
            rep = "std::" + other + text[len("std::" + name):]
            self.add("swap-min-max", s, e, rep,
                     "((@CHECK@) ? (" + (rep) + ") : (@INNER@))", fn)
        elif name in ("CheckedAdd", "CheckedMul", "CheckedRoundUp"):
            args = [a for a in c.get_arguments()]
            if len(args) != 2 or not all(_in_file(a, self.path) for a in args):
                return
            a, b = (self.text(*self.rng(x)) for x in args)
            plain = {
                "CheckedAdd": "(%s) + (%s)" % (a, b),
                "CheckedMul": "(%s) * (%s)" % (a, b),
                "CheckedRoundUp": "((%s) + (%s) - 1) / (%s) * (%s)" % (a, b, b, b),
            }[name]
            rep = "std::optional<std::size_t>(" + plain + ")"
            self.add("unchecked-math", s, e, rep,
                     "((@CHECK@) ? " + (rep) + " : (@INNER@))", fn)

    def _return(self, c, fn, func):
        if func is None or not _returns_status(func):
            return
        ch = list(c.get_children())
        if len(ch) != 1 or not _in_file(ch[0], self.path):
            return
        s, e = self.rng(ch[0])
        text = self.text(s, e)
        if (not self.clean(s, e) or text.startswith("{") or "OkStatus()" in text
                or s == e):
            return
        self.add("error-to-ok", s, e, "absl::OkStatus()",
                 "((@CHECK@) ? absl::Status(absl::OkStatus()) : absl::Status(@INNER@))", fn)


def _returns_status(func):
    rt = func.result_type.spelling if func.kind != K.LAMBDA_EXPR else ""
    return rt in ("absl::Status", "Status", "absl::lts_20220623::Status")


def _condition(c):
    """The condition expression of a statement, or None when it declares a
    variable (`if (auto x = f())`), has an init statement, or has none."""
    ch = list(c.get_children())
    if not ch or any(x.kind == K.VAR_DECL for x in ch):
        return None
    if c.kind == K.CONDITIONAL_OPERATOR:
        return ch[0]
    if c.kind == K.DO_STMT:
        return ch[1] if len(ch) == 2 and ch[1].kind.is_expression() else None
    if c.kind == K.FOR_STMT:
        return None                           # libclang hides which child is which
    # if/while: [cond, body(, else)]; `if (init; cond)` starts with a statement.
    return ch[0] if ch[0].kind.is_expression() else None


def _strip_unexposed(c):
    while c is not None and c.kind in (K.UNEXPOSED_EXPR, K.PAREN_EXPR):
        ch = list(c.get_children())
        c = ch[0] if len(ch) == 1 else None
    return c


def _statement_end(src, e):
    """Offset just past the ';' that ends an expression statement at e."""
    i = e
    while i < len(src) and src[i:i + 1] in (b" ", b"\t"):
        i += 1
    if src[i:i + 1] == b";":
        return i + 1
    if i > 0 and src[e - 1:e] == b";":
        return e
    return None


def _arithmetic(t):
    t = t.get_canonical()
    return t.kind in (ci.TypeKind.INT, ci.TypeKind.UINT, ci.TypeKind.LONG, ci.TypeKind.ULONG,
                      ci.TypeKind.LONGLONG, ci.TypeKind.ULONGLONG, ci.TypeKind.POINTER)


def _referenced_after(compound, decl_stmt, var):
    after = decl_stmt.extent.end.offset
    for node in compound.walk_preorder():
        if (node.kind == K.DECL_REF_EXPR and node.extent.start.offset > after
                and node.referenced is not None and node.referenced == var):
            return True
    return False


def compile_args(root):
    absl = os.path.expanduser("~/.cache/gpualloc/sources/abseil-20220623.1")
    return ["-x", "c++", "-std=c++20", "-I" + root, "-I" + absl,
            "-I/usr/local/cuda/include", "-Wno-everything"]


def find_mutants(root, rel):
    path = os.path.join(root, rel)
    with open(path, "rb") as f:
        source = f.read()
    tu = ci.Index.create().parse(
        path, args=compile_args(root),
        options=ci.TranslationUnit.PARSE_DETAILED_PROCESSING_RECORD)
    errors = [d for d in tu.diagnostics if d.severity >= ci.Diagnostic.Error]
    if errors:
        raise RuntimeError("%s does not parse: %s" % (rel, errors[0]))
    return _FileMutator(path, rel, source, tu).run()
