#!/usr/bin/env bash
# The GPU benchmark tables in one device call (see README.md beside this file).
#
#   bash benchmarks/device/run_checks.sh                # THERE: CUDA, full sizes, ~6-7 min
#   bash benchmarks/device/run_checks.sh --cpu-dry-run  # HERE: the same steps, CPU, small sizes
#
# Installs the carried wheels (.whl/, from fetch_wheels.sh) into $DEVICE_SITE (/tmp/site), puts it
# first on PYTHONPATH, then runs each benchmark under its own `timeout`, tee-ing its output to
# $OUT/<step>.txt ($OUT, else ./device_out). A failing or hanging step never stops the others; the
# exit status is the number of steps that failed. Sizes and limits can be overridden by the
# variables below (e.g. EVAL_IMAGES=300 for the full 300-image split, ~2x the eval time), and
# STEPS="eval_fp32 train_step" runs only those steps (a rerun on the warm machine).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
cd "$REPO" || exit 99

MODE=gpu
for arg in "$@"; do
  case "$arg" in
    --cpu-dry-run) MODE=cpu ;;
    -h | --help) sed -n '2,12p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

OUT="${OUT:-$REPO/device_out}"
mkdir -p "$OUT"
SITE="${DEVICE_SITE:-/tmp/site}"
PY="${PYTHON:-python3}"
T0=$(date +%s)

if [ "$MODE" = gpu ]; then
  DEV=cuda
  SIZES="${SMOOTH_SIZES:-256 1024 4096 8192}"
  # 150 images (750 captions) x k_test 64 = 57,600 LAVIS ITM pairs per arch: ~1.1-1.3 min per run
  # on an H100 (LAVIS's fp32 path dominates: ~24 GFLOP a BLIP pair at 384 px); 300 images doubles it.
  EVAL_ARGS="--config base --device cuda --image-size 384 --images ${EVAL_IMAGES:-150} --k-test ${EVAL_K:-64}"
  TRAIN_ARGS="--config base --device cuda --batch ${TRAIN_BATCH:-32} --image-size 384"
  # Expected on an H100: ~3 min, ~1.3 min, ~1.1 min, ~1 min (README.md); limits ~1.5-2x that.
  T_SMOOTH="${T_SMOOTH:-240}" T_EVAL="${T_EVAL:-150}" T_TRAIN="${T_TRAIN:-150}"
else
  DEV=cpu
  SIZES="${SMOOTH_SIZES:-64 128}"
  # Same base-size BLIP/ALBEF code paths as the GPU run, at sizes a 2-core CPU does in seconds.
  EVAL_ARGS="--config ${DRY_CONFIG:-base} --device cpu --image-size 96 --images ${EVAL_IMAGES:-6} --k-test ${EVAL_K:-3}"
  TRAIN_ARGS="--config ${DRY_CONFIG:-base} --device cpu --batch ${TRAIN_BATCH:-4} --image-size 96 --steps 1"
  T_SMOOTH="${T_SMOOTH:-300}" T_EVAL="${T_EVAL:-300}" T_TRAIN="${T_TRAIN:-300}"
fi
DATA_DIR="${EVAL_DATA_DIR:-/tmp/bench_eval_data_$MODE}"
# No step may start or run past this many seconds after the start, so the whole script ends inside
# the device call's 600 s even when steps hang (each step's limit is cut to what is left).
TOTAL_LIMIT="${TOTAL_LIMIT:-560}"
STEPS="${STEPS:-smooth_ndcg eval_fp32 eval_amp train_step}"

# ---- environment -----------------------------------------------------------------------------
{
  echo "mode $MODE, repo $REPO, out $OUT, site $SITE, $(date -u +%FT%TZ)"
  nvidia-smi -L 2>&1 || echo "(no nvidia-smi)"
  echo "nproc $(nproc); $(free -g 2>/dev/null | awk '/Mem:/ {print "RAM " $2 " GiB"}')"
  df -h /tmp /dev/shm 2>/dev/null
  # The eval loader uses 4 worker processes on CUDA, passing image batches through /dev/shm.
  shm_kib=$(df -k --output=avail /dev/shm 2>/dev/null | tail -1 | tr -d ' ')
  if [ "$MODE" = gpu ] && [ -n "$shm_kib" ] && [ "$shm_kib" -lt 4194304 ]; then
    echo "/dev/shm has under 4 GiB free: trying to enlarge it"
    mount -o remount,size=16G /dev/shm 2>&1 && df -h /dev/shm
  fi
  rm -rf "$SITE"
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "no wheels in .whl/: run benchmarks/device/fetch_wheels.sh here and carry .whl"
  elif ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl 2>&1; then
    echo "pip install of .whl/*.whl FAILED"
  fi
} 2>&1 | tee "$OUT/env.txt"

export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
# spaCy: LAVIS imports it at module level but never uses it here; the image has none (stub's doc).
if ! "$PY" -c 'import spacy' >/dev/null 2>&1; then
  export PYTHONPATH="$PYTHONPATH:$HERE/stubs"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false
# LAVIS's invalid escapes and fairscale's torch.cuda.amp deprecations: noise in every process.
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::SyntaxWarning,ignore::FutureWarning}"

{
  echo "PYTHONPATH=$PYTHONPATH"
  timeout -k 10 180 "$PY" - <<'EOF' 2>&1
import importlib.metadata as md, platform, sys, time
t = time.perf_counter()
import torch
import lavis_listwise, lavis, transformers, tokenizers, huggingface_hub, timm, numpy
print(f"python {platform.python_version()} ({sys.executable}); import lavis_listwise {time.perf_counter() - t:.1f} s")
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), cuda available {torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
for name in ("numpy", "transformers", "tokenizers", "huggingface_hub", "timm", "salesforce-lavis",
             "omegaconf", "triton", "torchvision", "decord", "pycocotools", "safetensors"):
    try:
        print(f"  {name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name} -")
for mod in (transformers, tokenizers, huggingface_hub, timm, lavis):
    print(f"  {mod.__name__} from {mod.__file__}")
EOF
  echo "import check exit status $?"
} 2>&1 | tee -a "$OUT/env.txt"

# ---- steps -----------------------------------------------------------------------------------
STATUS="$(mktemp)"
FAILED=0

step() { # step NAME LIMIT_S ARGS...: run under timeout, tee to $OUT/NAME.txt, record status and time
  local name="$1" limit="$2"; shift 2
  local t0 rc left
  case " $STEPS " in *" $name "*) ;; *) return ;; esac
  t0=$(date +%s)
  left=$((TOTAL_LIMIT - (t0 - T0) - 10))
  if [ "$left" -lt 20 ]; then
    echo "==== $name: SKIPPED, ${left}s left of TOTAL_LIMIT=${TOTAL_LIMIT}s" | tee "$OUT/$name.txt"
    echo "$name: SKIPPED (no time left)" >>"$STATUS"
    FAILED=$((FAILED + 1))
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "==== $name (limit ${limit}s): $*" | tee "$OUT/$name.txt"
  timeout -k 15 "$limit" "$@" 2>&1 | tee -a "$OUT/$name.txt"
  rc=${PIPESTATUS[0]}
  local note="ok"
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && note="TIMED OUT after ${limit}s"
  [ "$rc" -ne 0 ] && [ "$note" = ok ] && note="FAILED (exit $rc)"
  [ "$rc" -ne 0 ] && FAILED=$((FAILED + 1))
  echo "$name: $note, $(($(date +%s) - t0)) s" | tee -a "$OUT/$name.txt" >>"$STATUS"
}

step smooth_ndcg "$T_SMOOTH" "$PY" benchmarks/bench_smooth_ndcg.py --device "$DEV" --sizes $SIZES
step eval_fp32 "$T_EVAL" "$PY" benchmarks/bench_eval.py $EVAL_ARGS --data-dir "$DATA_DIR"
step eval_amp "$T_EVAL" "$PY" benchmarks/bench_eval.py $EVAL_ARGS --data-dir "$DATA_DIR" --amp
step train_step "$T_TRAIN" "$PY" benchmarks/bench_train_step.py $TRAIN_ARGS

# ---- summary: statuses and every table, last, so they end the device call's output tail ---------
{
  echo
  echo "#### summary ($MODE, $(($(date +%s) - T0)) s in all)"
  cat "$STATUS"
  for name in $STEPS; do
    echo
    echo "## $name"
    grep -E '^(\||torch |config |Traceback|[A-Za-z]*Error)' "$OUT/$name.txt" | tail -n 40
  done
} 2>&1 | tee "$OUT/summary.txt"
rm -f "$STATUS"
exit "$FAILED"
