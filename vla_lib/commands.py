"""The full command that fixes a problem, printed by every hint: the resolved settings are written to the run's
folder, so the command reproduces exactly these settings (flags, --set values and all).

`outputs/<run>/params.yaml` holds the settings the run was made with: it is written once, and later only with the
same settings (up to ones the weights do not depend on). A step or hint with other settings writes its own
`params.<hash>.yaml` beside it, so a finished run's settings file always describes its weights."""
from __future__ import annotations

import hashlib
import shlex
from pathlib import Path

import yaml

from vla_lib.atomic import atomic_write_text
from vla_lib.config import settings_changed


def run_params_file(cfg) -> Path:
    """A file holding exactly these settings in the run's folder: `params.yaml` when it is this run's (or does not
    exist yet), else `params.<hash>.yaml`. Returns its path."""
    path = Path(cfg.run_dir) / "params.yaml"
    text = _yaml(cfg)
    if path.exists() and path.read_text() != text:
        if settings_changed(yaml.safe_load(path.read_text()) or {}, cfg.to_dict()):
            path = path.with_name(f"params.{hashlib.sha1(text.encode()).hexdigest()[:8]}.yaml")
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)  # several ranks may write it at once
    return path


def command_for(cfg, mode: str) -> str:
    return f"python -m vla_lib --mode {mode} --params {shlex.quote(str(run_params_file(cfg)))}"


def _yaml(cfg) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
