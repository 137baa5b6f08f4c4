#!/usr/bin/env bash
# Prepare a Python environment for the real-server integration tests (tests/integration/test_comfyui_server.py).
#
#   bash tests/integration/setup_comfyui.sh /path/to/ComfyUI [/path/to/venv]
#
# Takes an existing ComfyUI checkout (tested with v0.8.0, commit 618b803d); it does not fetch, copy or
# change ComfyUI's tracked files. It makes a virtual environment (default: <ComfyUI>/.venv, which ComfyUI's
# .gitignore already ignores), installs torch/torchvision pinned to the builds this project's machines have
# on disk, then ComfyUI's requirements.txt (which brings comfyui-frontend-package), then this repository
# editable so the nodes' own dependencies are there. Only pip packages are installed.
#
# The frontend checks also need a Chromium (found as $CHROMIUM, chromium, chromium-browser, google-chrome);
# this script installs none. On Debian: apt-get update && apt-get install -y chromium. Without one those
# checks are skipped.
#
# Then, from this repository with its own environment active:
#   COMFYUI_PATH=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/venv/bin/python python -m pytest -q tests/integration
#
# Note: a ComfyUI clone whose comfy/text_encoders/llama_tokenizer/tokenizer.json blob is missing (a partial
# mirror) still works for these tests; check the rest out with a sparse checkout that leaves that file out:
#   git sparse-checkout set --no-cone '/*' '!/comfy/text_encoders/llama_tokenizer/tokenizer.json'
# or, from such a bare mirror, export a work tree without it:
#   git --git-dir=MIRROR archive 618b803d -- . ':!comfy/text_encoders/llama_tokenizer/tokenizer.json' | tar -x -C DIR
set -euo pipefail

if [ $# -lt 1 ] || [ ! -f "$1/main.py" ] || [ ! -f "$1/requirements.txt" ]; then
    echo "usage: $0 /path/to/ComfyUI [/path/to/venv]   (a ComfyUI checkout with main.py and requirements.txt)" >&2
    exit 2
fi
COMFYUI="$(cd "$1" && pwd)"
VENV="${2:-$COMFYUI/.venv}"
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
PYTHON3="${PYTHON3:-python3}"

if [ -f "$COMFYUI/comfyui_version.py" ]; then
    echo "ComfyUI $(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$COMFYUI/comfyui_version.py") at $COMFYUI"
fi

# A plain venv (not --system-site-packages): ComfyUI and the pack see only what is installed here.
[ -x "$VENV/bin/python" ] || "$PYTHON3" -m venv "$VENV"
PY="$VENV/bin/python"

# torch/torchvision first, pinned as in .ci/run (no multi-GB download where the wheels lie on disk);
# requirements.txt then keeps them and adds torchaudio, torchsde, aiohttp, av, the frontend package, ...
"$PY" -m pip install -q torch==2.14.1 torchvision==0.29.1
"$PY" -m pip install -q -r "$COMFYUI/requirements.txt"
"$PY" -m pip install -q -e "$REPO"
"$PY" -m pip check

# What the server start-up and the pack import.
"$PY" -c "import torch, torchvision, torchaudio, aiohttp, av, yaml, sqlalchemy, alembic, comfyui_frontend_package, \
comfy_kitchen, diffusers, transformers, segment_anything, cv2, surgsora; print('ok: torch', torch.__version__)"

echo
echo "Run the integration tests from $REPO with:"
echo "  COMFYUI_PATH=$COMFYUI COMFYUI_PYTHON=$PY python -m pytest -q tests/integration"
