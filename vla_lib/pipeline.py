"""The main job: run the numbered notebooks with papermill from one parameter file into outputs/<run>/."""
from __future__ import annotations

import time
from pathlib import Path


from vla_lib.config import RunConfig
from vla_lib.notebook import execute, repo_root
from vla_lib.sim.demonstrations import write_dataset

NOTEBOOKS = ["01_dataset_audit", "02_vl_cache", "03_train", "04_eval_latency", "05_compare_runs", "06_live_rig",
             "07_runtime_delay"]


def ensure_synthetic(cfg: RunConfig, force: bool = False, log=print) -> list[Path]:
    """Write the synthetic sessions unless the data root already holds sessions (build on demand, never commit)."""
    root = Path(cfg.data.root)
    if not force and root.exists() and any(root.glob("*/*")):
        return []
    if Path(cfg.synthetic.out_dir).resolve() != root.resolve():
        raise ValueError(f"data.root ({root}) is empty and is not synthetic.out_dir ({cfg.synthetic.out_dir}): "
                         "point data.root at your recordings, or at the synthetic output")
    log(f"writing the synthetic sessions under {root} (the recorder's formats; a minute or two, once)")
    return write_dataset(cfg.synthetic)


class NotebookError(RuntimeError):
    """A notebook of the demo failed: which one, in which cell, with what, and where the executed copy is."""


def run_notebooks(params_file: str, only: list[str] | None = None, log=print) -> Path:
    """Each notebook gets the params file and nothing else; what it prints streams to the terminal as it runs."""
    import papermill as pm

    root = repo_root()
    cfg = RunConfig.from_yaml(root / params_file)
    out = root / cfg.run_dir
    out.mkdir(parents=True, exist_ok=True)
    for name in NOTEBOOKS:
        if only and not any(name.startswith(o) for o in only):
            continue
        src = root / "notebooks" / f"{name}.ipynb"
        if not src.exists():
            continue
        if name == "05_compare_runs" and not cfg.sweep.grid:
            log(f"[demo] {name} skipped: {params_file} has no sweep grid")
            continue
        if name == "07_runtime_delay" and cfg.synthetic.scenario != "sensor_task":
            log(f"[demo] {name} skipped: its closed loop needs synthetic.scenario sensor_task")
            continue
        start = time.time()
        log(f"[demo] {name} ...")
        try:
            execute(src, out / f"{name}.ipynb", params_file, cwd=root, prefix=f"[demo {name[:2]}] ")
        except pm.PapermillExecutionError as e:
            raise NotebookError(f"notebook {name} failed in cell {e.exec_count}: {e.ename}: {e.evalue} "
                                f"(the executed notebook with the traceback: {out / (name + '.ipynb')})") from None
        log(f"[demo] {name} done in {time.time() - start:.0f} s -> {out / (name + '.ipynb')}")
    return out
