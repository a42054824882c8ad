#!/usr/bin/env bash
# The test suite on a fresh machine: install (with test extras), then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
exec .venv/bin/python -m pytest "$@"
