#!/usr/bin/env bash
# The quality gate: checks that need minutes of training or compiling (the trained policy beats the baselines on
# held-out sessions, the compiled encoder equals stock, ...), kept out of the unit suite (scripts/test.sh) so that it
# stays fast. CI runs both. Tests opt in with @pytest.mark.quality.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -m quality "$@"
