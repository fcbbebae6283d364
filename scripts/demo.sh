#!/usr/bin/env bash
# One command: set up .venv, then run the numbered notebooks on the embedded default (params/demo.yaml), then the
# demo's Stage 2 (params/demo_stage2.yaml: LoRA from the Stage-1 best checkpoint, notebooks 03 and 04).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m vla_lib --mode demo --params "${1:-params/demo.yaml}"
if [ -z "${1:-}" ]; then
    exec .venv/bin/python -m vla_lib --mode demo --params params/demo_stage2.yaml --only 03 04
fi
