#!/usr/bin/env bash
# Set up (with test-only packages) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
exec .venv/bin/python -m pytest -q -n 2 --durations=15 -W ignore::DeprecationWarning tests "$@"
