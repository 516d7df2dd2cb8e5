#!/usr/bin/env bash
# Set up (or reuse) the local virtual environment, then run one job:
#   bash scripts/run.sh demo         the main job: pairwise vs listwise on synthetic data (CPU, ~5 min)
#   bash scripts/run.sh test         pre-commit on every file, then the whole pytest suite
#   bash scripts/run.sh setup        only set up the venv with the dev tools (what `test` does first)
# Environment (docs/setup.md has each variable with examples): PYTHON (default python3.11, else python3;
# 3.11, 3.12 and 3.13 are tested), LAVIS_LISTWISE_VENV (default .venv for Python 3.11, .venv-py3.12 /
# .venv-py3.13 for the others; absolute, or relative to the repository root, like a relative PYTHON path).
# Two stacks (docs/setup.md, "Python versions"): Python 3.11 installs LAVIS 1.0.2 with its own pins
# (constraints.txt); 3.12 and 3.13 install LAVIS with --no-deps next to current transformers 4.x, timm,
# numpy 2 and opencv 4.x (constraints-py312.txt), since LAVIS's pins have no wheels there.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-$(command -v python3.11 || command -v python3)}
# A pyenv shim (python3.12) fails unless that version is selected: then use pyenv's newest 3.12.x.
if ! "$python" -c '' 2>/dev/null && command -v pyenv >/dev/null \
  && [[ "$(basename "$python")" =~ ^python(3\.[0-9]+)$ ]]; then
  found=$(ls -d "$(pyenv root)/versions/${BASH_REMATCH[1]}".*/bin/"$(basename "$python")" 2>/dev/null \
    | sort -V | tail -1 || true)
  [ -n "$found" ] && python=$found
fi
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) \
  || { echo "error: cannot run $python; set PYTHON=..." >&2; exit 1; }
case "$pyver" in
  3.11) constraints=constraints.txt ;;
  3.12 | 3.13) constraints=constraints-py312.txt ;;
  *)
    echo "error: Python $pyver: lavis-listwise supports (and tests) 3.11, 3.12 and 3.13; set PYTHON=..." >&2
    exit 1
    ;;
esac
venv=${LAVIS_LISTWISE_VENV:-$([ "$pyver" = 3.11 ] && echo .venv || echo ".venv-py$pyver")}
# Absolute from here on: it goes on PATH, where a relative directory would not be found.
case "$venv" in /*) ;; *) venv=$PWD/$venv ;; esac

# pip's report after an install on the 3.12+ stack lists salesforce-lavis's pins that the stack
# replaces on purpose ("ERROR: pip's dependency resolver does not currently take into account ...").
# Those lines become one line saying so; any other line of the report (another package's conflict,
# or a LAVIS requirement not in these lists) is printed in full, with pip's ERROR header. Every other
# line of pip's stderr passes through as it comes.
replaced_pins="transformers timm opencv-python-headless"  # no Python 3.12+ wheels: constraints-py312.txt
left_out="streamlit plotly ipython opendatasets pre-commit wheel"  # LAVIS's app and dev tools: setup.cfg
pip_report_filter() {
  awk -v replaced=" $replaced_pins " -v left_out=" $left_out " '
    function flush(  i) {
      if (!inblock) return
      if (swapped != "" && missing != "") swapped = swapped ";"
      if (swapped != "" || missing != "")
        print "==> pip lists salesforce-lavis 1.0.2 pins this stack replaces on purpose (docs/setup.md):" \
          (swapped == "" ? "" : " no Python 3.12+ wheels, so" swapped) \
          (missing == "" ? "" : " its app/dev tools, left out:" missing)
      fflush()
      if (n) { print header > "/dev/stderr"; for (i = 1; i <= n; i++) print other[i] > "/dev/stderr" }
      inblock = 0; swapped = ""; missing = ""; n = 0
    }
    /^ERROR: pip.s dependency resolver does not currently take into account/ {
      flush(); inblock = 1; header = $0; next
    }
    inblock && / requires / {
      if ($1 == "salesforce-lavis" && $3 == "requires" && match($4, /^[A-Za-z0-9._-]+/)) {
        name = tolower(substr($4, 1, RLENGTH)); req = substr($4, 1, length($4) - 1)
        if (index(replaced, " " name " ") && $0 ~ /, but you have .* which is incompatible\.$/) {
          swapped = swapped (swapped == "" ? " " : ", ") req " -> " $(NF - 3); next
        }
        if (index(left_out, " " name " ") && $0 ~ /, which is not installed\.$/) {
          missing = missing (missing == "" ? " " : ", ") req; next
        }
      }
      other[++n] = $0; next
    }
    { flush(); print > "/dev/stderr" }
    END { flush() }
  '
}
pip_install() {
  if [ "$pyver" = 3.11 ]; then
    "$venv/bin/python" -m pip install --disable-pip-version-check -q -c "$constraints" "$@"
  else
    # pip's stderr through the filter (back to stderr, but for the one line), its stdout as it is
    { "$venv/bin/python" -m pip install --disable-pip-version-check -q -c "$constraints" "$@" \
      2>&1 >&3 3>&- | pip_report_filter 3>&-; } 3>&1
  fi
}

setup() {  # $1: "base" or "dev"
  if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
  fi
  local have digest stamp extra
  have=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [ "$have" != "$pyver" ]; then
    echo "error: $venv has Python $have, not $pyver; set LAVIS_LISTWISE_VENV=... or remove $venv" >&2
    exit 1
  fi
  digest=$(cat "$constraints" setup.cfg setup.py pyproject.toml | sha256sum | cut -d' ' -f1)
  stamp="$venv/.lavis-listwise-$1"
  if [ "$(cat "$stamp" 2>/dev/null)" = "$digest" ]; then return; fi
  extra=$([ "$1" = dev ] && echo "[dev]" || true)
  echo "==> installing into $venv (Python $pyver, $constraints): torch + torchvision first, then lavis-listwise$extra"
  # torch and torchvision must come from the same release pair, installed together and first.
  pip_install torch==2.14.1 torchvision==0.29.1
  if [ "$pyver" != 3.11 ]; then
    # LAVIS without its pins; for Python >= 3.12 setup.cfg lists the dependencies of LAVIS's code.
    echo "==> salesforce-lavis 1.0.2 with --no-deps, then lavis-listwise's dependencies in place of its pins"
    pip_install --no-deps salesforce-lavis==1.0.2
  fi
  pip_install -e ".$extra"
  echo "$digest" > "$stamp"
  [ "$1" = dev ] && echo "$digest" > "$venv/.lavis-listwise-base"
  return 0
}

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PATH="$venv/bin:$PATH"

case "${1:-}" in
  demo)
    setup base
    shift
    exec lavis-listwise demo "$@"
    ;;
  setup)
    setup dev
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
    echo "usage: bash scripts/run.sh {demo|test|setup} [args...]" >&2
    exit 2
    ;;
esac
