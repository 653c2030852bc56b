#!/usr/bin/env bash
# Python packages for benchmarks/gpu_check.py on a GPU machine that has no package index,
# from wheels downloaded beforehand on a machine that has one.
#
# The GPU machine this was prepared for has python3 3.12 with a CUDA torch 2.11 (and numpy,
# safetensors, tqdm, matplotlib, huggingface-hub 1.33, pyarrow, pandas, xxhash, pyyaml,
# sentencepiece, tiktoken, setuptools, ...) but none of: torchtune, torchao, omegaconf, datasets
# (torchtune 0.6.1 imports it when imported), dill and multiprocess (datasets needs both when
# imported). Those six are the whole set `import torchtune, adept_cpt` needs there (sentencepiece
# and tiktoken, which `import torchtune` also needs, are already installed); torchdata, blobfile
# and kagglehub are torchtune requirements the check never needs: where torchtune's `tune`
# launcher cannot be imported without them, gpu_check.py runs `python -m adept_cpt`, which is
# what `tune run adept_cpt` runs. transformers is optional too: without it gpu_check.py writes
# its random-weight model with this package's own builder. setuptools is downloaded only for
# the isolated build of the editable install of this package. Checked in a fresh virtual
# environment holding only torch and those other packages (TARGET_PYTHON=3.11).
#
# 1. On a machine with PyPI access, from the repository root:
#      bash benchmarks/gpu_setup.sh download      # -> benchmarks/wheels/ (~10 MB)
# 2. Copy the repository, benchmarks/wheels/ included, to the GPU machine. There, from the
#    repository root:
#      bash benchmarks/gpu_setup.sh install
#      python3 benchmarks/gpu_check.py        # under 10 minutes; exit status 1 if a check fails
# 3. Copy benchmarks/results/gpu_check.json back.
#
# benchmarks/wheels/ is never committed: `download` writes a .gitignore of `*` into it, so git
# ignores the folder. Copy it along explicitly: a copy of the tracked files alone leaves it out.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=${WHEELS:-benchmarks/wheels}
PYTHON=${PYTHON:-python3}
TARGET_PYTHON=${TARGET_PYTHON:-3.12}  # the GPU machine's python3
RUNTIME=(
  torchtune==0.6.1
  torchao==0.15.0  # 0.16 breaks `import torchtune` 0.6.1; the abi3 manylinux wheel fits 3.12
  omegaconf==2.4.0
  datasets==5.2.0
  dill==0.4.1
  multiprocess==0.70.19  # per-Python-version wheel: fetched for TARGET_PYTHON
)
BUILD=(setuptools==84.2.1)

case "${1:-}" in
  download)
    mkdir -p "$WHEELS"
    echo "*" >"$WHEELS/.gitignore"  # git ignores the folder: never committed, copied instead
    "$PYTHON" -m pip download --no-deps --only-binary=:all: \
      --python-version "$TARGET_PYTHON" --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$WHEELS" "${RUNTIME[@]}" "${BUILD[@]}"
    ls -l "$WHEELS"
    ;;
  install)
    "$PYTHON" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" "${RUNTIME[@]}"
    # Build isolation takes setuptools from the wheels folder, leaving the machine's own alone.
    "$PYTHON" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" -e .
    "$PYTHON" -c "import torch, torchtune, adept_cpt, adept_components; \
print('ready: torch', torch.__version__, 'torchtune', torchtune.__version__)"
    ;;
  *)
    echo "usage: bash $0 download|install" >&2
    exit 2
    ;;
esac
