#!/usr/bin/env bash
# Create .venv with everything the workbench needs (idempotent). CPU machines get torch 2.14.1 + torchvision 0.29.1,
# which import together (the torch 2.13.0 CPU wheel does not work with PyPI's torchvision). GPU users: see README.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import vla_lib, torch, torchvision, transformers, qwen_vl_utils, papermill, peft, zmq, pytest" 2>/dev/null; then
  echo "[setup] installing torch, torchvision and the workbench into .venv (a few minutes, once)"
  .venv/bin/pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/pip install -q --disable-pip-version-check -e ".[test]"
fi
.venv/bin/python -c "import torch, torchvision, transformers; print(f'env ok: torch {torch.__version__}, torchvision {torchvision.__version__}, transformers {transformers.__version__}')"
