#!/usr/bin/env bash
# Set up (or reuse) the local virtual environment, then run one job:
#   bash scripts/run.sh demo         the main job: pairwise vs listwise on synthetic data (CPU, ~5 min)
#   bash scripts/run.sh test         pre-commit on every file, then the whole pytest suite
# Environment: PYTHON (default python3.11, else python3), LAVIS_LISTWISE_VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${LAVIS_LISTWISE_VENV:-.venv}
python=${PYTHON:-$(command -v python3.11 || command -v python3)}

setup() {  # $1: "base" or "dev"
  if [ ! -x "$venv/bin/python" ]; then
    "$python" -c 'import sys; assert sys.version_info[:2] >= (3, 10), sys.version' \
      || { echo "error: needs Python >= 3.10 (3.11 tested); set PYTHON=..." >&2; exit 1; }
    "$python" -m venv "$venv"
  fi
  local digest stamp extra
  digest=$(cat constraints.txt setup.cfg setup.py pyproject.toml | sha256sum | cut -d' ' -f1)
  stamp="$venv/.lavis-listwise-$1"
  if [ "$(cat "$stamp" 2>/dev/null)" = "$digest" ]; then return; fi
  extra=$([ "$1" = dev ] && echo "[dev]" || true)
  echo "==> installing into $venv (torch + torchvision first, then lavis-listwise$extra)"
  # torch and torchvision must come from the same release pair, installed together and first.
  "$venv/bin/python" -m pip install --disable-pip-version-check -q -c constraints.txt \
    torch==2.14.1 torchvision==0.29.1
  "$venv/bin/python" -m pip install --disable-pip-version-check -q -c constraints.txt -e ".$extra"
  echo "$digest" > "$stamp"
  [ "$1" = dev ] && echo "$digest" > "$venv/.lavis-listwise-base"
  return 0
}

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PATH="$PWD/$venv/bin:$PATH"

case "${1:-}" in
  demo)
    setup base
    shift
    exec lavis-listwise demo "$@"
    ;;
  test)
    setup dev
    shift
    pre-commit run --all-files --show-diff-on-failure
    set +e
    python -m pytest "$@"
    rc=$?
    set -e
    if [ "$rc" -eq 5 ]; then
      echo "error: pytest collected no tests (exit 5); that is a failure here" >&2
      exit 1
    fi
    exit "$rc"
    ;;
  *)
    echo "usage: bash scripts/run.sh {demo|test} [args...]" >&2
    exit 2
    ;;
esac
