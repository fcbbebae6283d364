"""Small helpers that keep the notebooks thin: the config from the papermill parameters, running a notebook headless,
figure saving, metrics."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from vla_lib.config import ConfigError, RunConfig, load_params, resolve_extends
from vla_lib.jsonio import write_json

# What a notebook's parameters cell declares (every notebook the same, each None unless given): the params file's
# path (`papermill -p params_file FILE`), or the file's own top-level keys (`papermill -f FILE` injects each one).
SECTIONS = tuple(RunConfig().to_dict())
PARAMETERS = ("params_file", "extends", *SECTIONS)
INTERACTIVE_DEFAULT = "params/demo.yaml"  # only when nothing was given (a notebook opened in Jupyter)


def repo_root(start: Path | None = None) -> Path:
    """The folder holding params/ (notebooks run from notebooks/ interactively, from the root under papermill)."""
    here = (start or Path.cwd()).resolve()
    for folder in [here, *here.parents]:
        if (folder / "params").is_dir() and (folder / "vla_lib").is_dir():
            return folder
    return here


def notebook_config(parameters: dict) -> RunConfig:
    """The run config of a notebook from its parameters (pass `globals()`): exactly the params file it was given, or
    exactly the sections papermill injected from one; nothing else is read or merged in.

    Also moves the working directory to the repository root, so that relative paths (the params file's too) mean the
    same thing from Jupyter, papermill and the CLI.
    """
    os.chdir(repo_root())
    _inline_figures()
    params_file = parameters.get("params_file")
    injected = {k: parameters[k] for k in PARAMETERS[1:] if parameters.get(k) is not None}
    if params_file and injected:
        raise ConfigError(f"the notebook got params_file={params_file!r} and the sections {sorted(injected)}: give "
                          "it one parameter file, either `-p params_file FILE` or `-f FILE`, not both")
    if injected:  # `-f FILE`: its `extends:` is relative to params/ (papermill does not say where FILE was)
        values, source = resolve_extends(injected, Path("params")), "the injected parameters (papermill -f)"
    else:
        source = params_file or INTERACTIVE_DEFAULT
        values = load_params(source)
    try:
        cfg = RunConfig.from_dict(values)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    print(f"config: {source} (run {cfg.run_name}, folder {cfg.run_dir})")
    return cfg


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


class _Prefixed:
    """A stream that writes each line of a notebook's printed output with a prefix (the terminal's progress)."""

    def __init__(self, prefix: str, stream=None):
        self.prefix, self.stream, self.pending = prefix, stream or sys.stdout, ""

    def write(self, text: str) -> None:
        lines = (self.pending + text).split("\n")
        self.pending = lines.pop()
        for line in lines:
            line = line.rsplit("\r", 1)[-1]  # a progress bar's redraws: its last state
            if line.strip():
                self.stream.write(f"{self.prefix}{line}\n")

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        """What is left of a last line printed without a newline."""
        self.write("\n")


def execute(src: str | Path, dst: str | Path, params_file: str | Path, cwd: str | Path,
            prefix: str | None = None) -> None:
    """Run one notebook headless with papermill on one params file; with a `prefix`, its printed output is streamed
    to this process's stdout line by line under that prefix (the terminal sees what it is doing). The kernel talks over IPC sockets in a private temporary folder: over TCP
    ipykernel warns (on stderr, which a nested run would carry into the executed notebook) that the channel is
    unencrypted."""
    import papermill as pm  # heavy (nbclient, jupyter): only when notebooks run
    from traitlets.config import Config

    with tempfile.TemporaryDirectory(prefix="vla-kernel-") as sockets:
        config = Config()
        config.KernelManager.transport = "ipc"
        config.KernelManager.ip = str(Path(sockets) / "kernel")  # the socket files, not in the repository
        stream = _Prefixed(prefix) if prefix else None
        try:
            pm.execute_notebook(str(src), str(dst), parameters={"params_file": str(params_file)}, cwd=str(cwd),
                                kernel_name="python3", progress_bar=False, stdout_file=stream, config=config)
        finally:
            if stream is not None:
                stream.close()


def save_fig(fig, out_dir: str | Path, name: str) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, dpi=90, bbox_inches="tight")
    return path


def write_metrics(out_dir: str | Path, name: str, metrics: dict) -> Path:
    return write_json(Path(out_dir) / name, metrics)
