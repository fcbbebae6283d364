"""Small helpers that keep the notebooks thin: config from the papermill parameters, figure saving, metrics."""
from __future__ import annotations

import json
import os
from pathlib import Path

from vla_lib.config import RunConfig, deep_merge, load_params


def repo_root(start: Path | None = None) -> Path:
    """The folder holding params/ (notebooks run from notebooks/ interactively, from the root under papermill)."""
    here = (start or Path.cwd()).resolve()
    for folder in [here, *here.parents]:
        if (folder / "params").is_dir() and (folder / "vla_lib").is_dir():
            return folder
    return here


def notebook_config(params_file: str | None, **injected) -> RunConfig:
    """The run config of a notebook: the parameter file, then whatever papermill injected on top of it.

    Also moves the working directory to the repository root so that relative paths in params mean the same
    thing from Jupyter, papermill and the CLI.
    """
    os.chdir(repo_root())
    _inline_figures()
    values = load_params(params_file) if params_file else {}
    extra = {k: v for k, v in injected.items() if v not in (None, {}, "")}
    return RunConfig.from_dict(deep_merge(values or {}, extra))


def _inline_figures() -> None:
    """Figures go into the executed notebook whatever the environment: with MPLBACKEND=Agg (headless machines, the
    demo, CI) `plt.show()` would embed nothing, so inside a kernel the inline backend is selected explicitly."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and "IPKernelApp" in shell.config:
        shell.run_line_magic("matplotlib", "inline")


def save_fig(fig, out_dir: str | Path, name: str) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, dpi=90, bbox_inches="tight")
    return path


def write_metrics(out_dir: str | Path, name: str, metrics: dict) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(json.dumps(metrics, indent=1, default=float))
    return path
