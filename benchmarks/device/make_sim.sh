#!/usr/bin/env bash
# Build, HERE, a CPU stand-in for the GPU machine's Python (to validate run_checks.sh without a GPU).
#
#   bash benchmarks/device/make_sim.sh [/tmp/devsim]     # ~1.5 min from PyPI, ~6 GiB (CUDA libraries)
#   PATH=/tmp/devsim/bin:$PATH OUT=/tmp/dry bash benchmarks/device/run_checks.sh --cpu-dry-run
#
# Python 3.12 with the image's versions where KINDS.md gives them (torch 2.11.0 with its CUDA 13
# wheels, which `import torch` needs even on CPU; numpy 2.5.2, transformers 5.17.0, tokenizers
# 0.23.2, huggingface_hub 1.33.0, safetensors 0.8.0, accelerate 1.15.0, ...), the latest of the
# other packages of the image's list that an import of LAVIS or transformers can touch, and none
# that the image lacks (pip's extra dependencies not on that list are removed at the end).
set -euo pipefail
SIM="${1:-/tmp/devsim}"
PY312="${PY312:-}"
if [ -z "$PY312" ]; then  # a pyenv shim may exist and still fail: take the first that runs
  for c in python3.12 /usr/bin/python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
    if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then PY312="$c"; break; fi
  done
fi
[ -n "$PY312" ] || { echo "no working python3.12 (set PY312=...)" >&2; exit 1; }
"$PY312" -m venv "$SIM"
"$SIM/bin/python" -m pip install -q --only-binary=:all: \
  torch==2.11.0 torchvision==0.26.0 triton==3.6.0 numpy==2.5.2 transformers==5.17.0 \
  tokenizers==0.23.2 huggingface_hub==1.33.0 safetensors==0.8.0 sentencepiece==0.2.2 \
  accelerate==1.15.0 tiktoken==0.14.0 jax==0.11.2 jaxlib==0.11.2 sentence-transformers==6.0.1 \
  timm peft flax opencv-python-headless pandas pyarrow regex requests tqdm pyyaml pillow scipy \
  scikit-learn scikit-image matplotlib einops filelock packaging portalocker typer rich pytest \
  hypothesis pytest-timeout pytest-xdist pytest-mock psutil h5py protobuf lxml simplejson tabulate \
  imageio python-dateutil six click cloudpickle attrs httpx xxhash msgpack ml-dtypes
# Not in the image's package list (KINDS.md, "Python packages already there"):
"$SIM/bin/python" -m pip uninstall -q -y pydantic pydantic-core annotated-types typing-inspection tzdata
"$SIM/bin/python" -c 'import torch, transformers, numpy; print("sim:", torch.__version__, transformers.__version__, numpy.__version__)'
du -sh "$SIM"
