"""Checks the mutation tool itself: every rule finds its site in
testdata/sample.cc, and the schema build with GPUALLOC_MUTANT=id behaves
exactly like that mutant applied alone (and like the original with no id)."""

import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import mutants as mutants_lib  # noqa: E402
import runner  # noqa: E402
import schema as schema_lib  # noqa: E402

SAMPLE = "harness/mutation/testdata/sample.cc"


def _root():
    # Under Bazel the runfiles tree is the root; elsewhere the repository.
    return os.path.abspath(os.path.join(HERE, "..", ".."))


class MutationToolTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = _root()
        cls.src = open(os.path.join(cls.root, SAMPLE), "rb").read()
        cls.mutants = mutants_lib.find_mutants(cls.root, SAMPLE)
        for i, m in enumerate(cls.mutants, 1):
            m.id = i
        cls.tmp = tempfile.mkdtemp()

    def build(self, name, text, werror=True):
        src = os.path.join(self.tmp, name + ".cc")
        exe = os.path.join(self.tmp, name)
        with open(src, "w") as f:
            f.write(text)
        # A mutant alone may leave a parameter or variable unused; the
        # schema (which keeps the original code too) must build with -Werror.
        subprocess.run(["g++", "-std=c++20", "-Wall", "-Wextra", "-O0", "-o", exe, src]
                       + (["-Werror"] if werror else ["-w"]), check=True)
        return exe

    def run_exe(self, exe, mutant_id=None):
        env = dict(os.environ)
        env.pop("GPUALLOC_MUTANT", None)
        if mutant_id is not None:
            env["GPUALLOC_MUTANT"] = str(mutant_id)
        p = subprocess.run([exe], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           text=True, timeout=20)
        return p.returncode, p.stdout

    def test_every_rule_finds_its_site(self):
        found = {m.rule for m in self.mutants}
        self.assertEqual(set(mutants_lib.RULES) - found, set())

    def test_our_scoped_lock_is_dropped_too(self):
        # allocator/ holds its Mutex with MutexLock, not std::lock_guard.
        fns = {m.function for m in self.mutants if m.rule == "drop-lock"}
        self.assertIn("HeldWhileUpdating", fns)
        self.assertIn("Twice", fns)

    def test_schema_switches_exactly_one_mutant(self):
        kept, dropped = schema_lib.drop_overlaps(self.mutants)
        self.assertEqual(dropped, [])
        schema_exe = self.build("schema", schema_lib.render(self.src, kept))
        original = self.run_exe(self.build("original", self.src.decode()))
        self.assertEqual(self.run_exe(schema_exe), original)
        self.assertEqual(self.run_exe(schema_exe, 0), original)
        differing = 0
        for m in kept:
            with self.subTest(mutant=m.id, rule=m.rule, line=m.line):
                alone = self.run_exe(self.build("m%d" % m.id, schema_lib.apply_one(self.src, m), werror=False))
                self.assertEqual(self.run_exe(schema_exe, m.id), alone)
                differing += alone != original
        # The sample is written so that most mutants change its output: a
        # schema that never switched anything on would fail above, and this
        # keeps the comparison from being vacuous.
        self.assertGreater(differing, len(kept) // 2)

    def test_compile_errors_are_traced_to_their_mutant(self):
        m = next(m for m in self.mutants if m.rule == "swap-min-max")
        text = schema_lib.render(self.src, [m])
        line = next(i for i, l in enumerate(text.splitlines(), 1) if "/*@m%d{*/" % m.id in l)
        self.assertEqual(schema_lib.mutants_at_lines(text, {line}), {m.id})
        self.assertEqual(schema_lib.mutants_at_lines(text, {1}), set())

    def test_two_schematised_files_share_a_translation_unit(self):
        # A schematised .cc includes its schematised header: one switch.
        text = schema_lib.PROLOGUE + schema_lib.PROLOGUE + \
            "int main() { return gpualloc_mutant_on_(3) ? 7 : 0; }\n"
        exe = self.build("two", text)
        self.assertEqual(self.run_exe(exe, 3)[0], 7)
        self.assertEqual(self.run_exe(exe, 4)[0], 0)

    def test_a_sample_keeps_its_picks_when_other_code_changes(self):
        def mutant(i, path="f.cc"):
            return mutants_lib.Mutant(path, "boundary", i, i + 1, "x", 1, "fn%d" % i, "@INNER@",
                                      id=i, original_text_key="a%d => b" % i)
        base = [mutant(i) for i in range(200)]
        picked = {m.key() for m in runner.sample(base, 20, 7)}
        self.assertEqual(len(picked), 20)
        self.assertEqual(picked, {m.key() for m in runner.sample(base, 20, 7)}, "deterministic")
        self.assertNotEqual(picked, {m.key() for m in runner.sample(base, 20, 8)}, "the seed matters")
        # Mutants of new code elsewhere may take some places, but every pick
        # of the old code in the bigger sample was picked before.
        grown = base + [mutant(i, "g.cc") for i in range(200, 260)]
        still = {m.key() for m in runner.sample(grown, 20, 7) if m.path == "f.cc"}
        self.assertTrue(still <= picked)
        self.assertGreater(len(still), 10)

    def test_partially_overlapping_ranges_are_dropped(self):
        a = mutants_lib.Mutant("f.cc", "boundary", 10, 20, "x", 1, "f", "@INNER@", id=1)
        b = mutants_lib.Mutant("f.cc", "boundary", 15, 25, "x", 1, "f", "@INNER@", id=2)
        c = mutants_lib.Mutant("f.cc", "boundary", 12, 18, "x", 1, "f", "@INNER@", id=3)
        d = mutants_lib.Mutant("g.cc", "boundary", 15, 25, "x", 1, "f", "@INNER@", id=4)
        kept, dropped = schema_lib.drop_overlaps([a, b, c, d])
        self.assertEqual(sorted(m.id for m in kept), [1, 3, 4])
        self.assertEqual([m.id for m in dropped], [2])


if __name__ == "__main__":
    unittest.main()
