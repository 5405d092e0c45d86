#!/usr/bin/env bash
# Debian's python3 has libclang's bindings (python3-clang-14); another python3
# earlier on PATH may not.
exec /usr/bin/python3 harness/mutation/mutation_tool_test.py "$@"
