"""Fails if a [guide] region of an example is not in docs/user-guide.md verbatim.

Usage: check_guide_examples.py USER_GUIDE EXAMPLE...
"""
import sys
import textwrap


def region(path):
    lines = open(path).read().splitlines()
    start = next(i for i, l in enumerate(lines) if l.strip() == "// [guide]")
    end = next(i for i, l in enumerate(lines) if l.strip() == "// [/guide]")
    return textwrap.dedent("\n".join(lines[start + 1:end]))


def main():
    guide = open(sys.argv[1]).read()
    failed = False
    for example in sys.argv[2:]:
        if region(example) not in guide:
            print(f"FAIL: the [guide] region of {example} is not in {sys.argv[1]} verbatim")
            failed = True
        else:
            print(f"ok   {example}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
