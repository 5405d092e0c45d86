#!/usr/bin/env bash
# Runs the guide check with the system's python3 (no Python rules needed).
set -euo pipefail
cd "$TEST_SRCDIR/$TEST_WORKSPACE"
exec python3 docs/examples/check_guide_examples.py docs/user-guide.md docs/examples/*_example.cc
