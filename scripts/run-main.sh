#!/usr/bin/env bash
# The main job on a fresh machine: install, then run the whole pipeline (download to a
# served model) with the embedded defaults. Extra arguments go to `tosguard run`.
set -euo pipefail
cd "$(dirname "$0")/.."
case " $* " in
  *" --preset quality "*|*" --preset=quality "*) bash scripts/setup.sh quality ;;
  *) bash scripts/setup.sh main ;;
esac
exec .venv/bin/tosguard run "$@"
