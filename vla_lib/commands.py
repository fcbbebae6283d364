"""The full command that fixes a problem, printed by every hint: the run's resolved settings are written to
`outputs/<run>/params.yaml`, so the command reproduces exactly these settings (flags, --set values and all)."""
from __future__ import annotations

import shlex
import uuid
from pathlib import Path


def run_params_file(cfg) -> Path:
    """Write the resolved settings of this run to `<run_dir>/params.yaml` (idempotent) and return the path."""
    path = Path(cfg.run_dir) / "params.yaml"
    text = _yaml(cfg)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")  # several ranks may write it at once
        tmp.write_text(text)
        tmp.replace(path)
    return path


def command_for(cfg, mode: str) -> str:
    return f"python -m vla_lib --mode {mode} --params {shlex.quote(str(run_params_file(cfg)))}"


def _yaml(cfg) -> str:
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
