"""The full command that fixes a problem, printed by every hint: the resolved settings are written to the run's
folder, so the command reproduces exactly these settings (flags, --set values and all).

`outputs/<run>/params.yaml` holds the settings the run was made with. Until the run has trained (no checkpoint, no
resume state) it follows the params file (the user edits their file and runs the cache step again); once it has, it
is never rewritten: a step or hint with other settings writes its own `params.<hash>.yaml` beside it, so a trained
run's settings file always describes its weights, and one that would put its training files elsewhere is refused
(that is another run)."""
from __future__ import annotations

import hashlib
import shlex
from pathlib import Path

import yaml

from vla_lib.atomic import atomic_write_text
from vla_lib.config import ConfigError


def run_params_file(cfg) -> Path:
    """A file holding exactly these settings in the run's folder: `params.yaml` when it does not exist yet, holds
    them, or the run has not trained; else `params.<hash>.yaml`. Returns its path."""
    path = Path(cfg.run_dir) / "params.yaml"
    text = _yaml(cfg)
    if path.exists() and path.read_text() != text and _trained(path):
        check_same_run(cfg)
        path = path.with_name(f"params.{hashlib.sha1(text.encode()).hexdigest()[:8]}.yaml")
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)  # several ranks may write it at once
    return path


def check_same_run(cfg) -> None:
    """A command may change how a trained run is evaluated, never where its files are: that would be another run.
    Raises ConfigError before anything is written if the run folder's params.yaml puts its training files
    elsewhere and training has written there."""
    path = Path(cfg.run_dir) / "params.yaml"
    if not path.exists() or not _trained(path):
        return
    where = _stored_output_dir(path)
    if Path(where).resolve() != Path(cfg.train.output_dir).resolve():
        raise ConfigError(f"{path} is the run whose training files are in {where}; this command puts them in "
                          f"{cfg.train.output_dir}. Give it its own run (--run-name NAME, or run_name in the params "
                          "file) instead of repointing this one")


def _stored_output_dir(path: Path) -> str:
    stored = yaml.safe_load(path.read_text()) or {}
    return (stored.get("train") or {}).get("output_dir") or str(path.parent / "train")


def _trained(path: Path) -> bool:
    """Has the run whose params.yaml is `path` trained (a checkpoint or resume state in its training folder)?"""
    ckpts = Path(_stored_output_dir(path)) / "checkpoints"
    return ckpts.is_dir() and any(ckpts.iterdir())


def command_for(cfg, mode: str) -> str:
    return f"python -m vla_lib --mode {mode} --params {shlex.quote(str(run_params_file(cfg)))}"


def _yaml(cfg) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
