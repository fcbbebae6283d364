#!/usr/bin/env bash
# One command: set up .venv, then run the numbered notebooks on the embedded default (params/demo.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m vla_lib --mode demo --params "${1:-params/demo.yaml}"
