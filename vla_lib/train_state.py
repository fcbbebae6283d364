"""A run folder's resume state, apart from the loop: an exact restart is read, checked and restored here."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from vla_lib.config import settings_changed


def rng_state() -> dict:
    """Every generator's state as tensors and plain numbers, so the resume state loads with weights_only=True."""
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
             "numpy_pos": int(np_pos), "numpy_has_gauss": int(np_has_gauss), "numpy_gauss": float(np_gauss),
             "python_version": int(py_version), "python_state": torch.tensor(py_state, dtype=torch.int64),
             "python_gauss": py_gauss}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    random.setstate((state["python_version"], tuple(state["python_state"].tolist()), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)


class RunStateError(RuntimeError):
    """A run folder that cannot be continued with these settings (finished, or other settings)."""


# What a resume reads before it restores anything: the run's settings, its process count, and its train/val split.
_RESUME_KEYS = ("run_config", "processes", "split")
# The layout `Trainer.save_resume` writes: a change to what it holds bumps it, so a file of another layout is refused in
# one line instead of failing halfway through the restore.
RESUME_FORMAT = "vla_lib.resume/1"


def read_resume(path: Path, cfg, processes: int, say=print) -> dict | None:
    """The saved resume state of this run folder, or None. Refuses a file of another (or no) `RESUME_FORMAT`, and a
    run with other settings or another number of processes (the sampler's split of each epoch and the effective batch
    depend on it), saying what differs; says which free settings changed."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain values only: no pickle
    except Exception as e:  # pickled objects, or a damaged file
        raise RunStateError(f"{path} cannot be resumed ({type(e).__name__}: not a resume state, or damaged); start a "
                            "new run with --run-name NAME") from None
    missing = [k for k in _RESUME_KEYS if k not in state]
    if missing:
        raise RunStateError(f"{path} is not a resume state (no {', '.join(missing)}); start a new run with "
                            "--run-name NAME")
    if state.get("format") != RESUME_FORMAT:
        raise RunStateError(f"{path} is a resume state of format {state.get('format')!r}, not {RESUME_FORMAT!r}: it "
                            "cannot be resumed; start without resuming (a new run with --run-name NAME)")
    changed = settings_changed(state["run_config"], cfg.to_dict())
    if changed:
        raise RunStateError(f"{path.parent.parent} holds a run with other settings ({'; '.join(changed)}). Start a new "
                            "run with --run-name NAME (or another train.output_dir), or restore those settings")
    if state["processes"] != processes:
        raise RunStateError(f"{path.parent.parent} was trained with {state['processes']} process(es), not {processes}: "
                            "an exact resume needs the same number (or start a new run with --run-name NAME)")
    free = settings_changed(state["run_config"], cfg.to_dict(), free_only=True)
    if free:
        say(f"Resuming with changed settings the weights do not depend on: {'; '.join(free)}")
    return state


def load_resume(state: dict, model, optimizer, scheduler, acc) -> dict:
    """Restore weights, optimiser, schedule and this rank's RNG; returns the progress with the epoch's running sums
    so far (so the epoch's train loss stays exact across the restart)."""
    acc.unwrap_model(model).load_state_dict(state["model"])
    optimizer.optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    mine = state["ranks"][acc.process_index]
    _set_rng_state(mine["rng"])
    return {**state["progress"], "totals": mine["totals"]}


def trim_metrics(path: Path, progress: dict) -> None:
    """Drop the rows logged after the resume state was saved: they are about to be logged again."""
    if not path.exists():
        return
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    keep = [r for r in rows if (r["epoch"] <= progress["epoch"] if "train/loss_epoch" in r
                                else r["step"] <= progress["global_step"])]
    path.write_text("".join(json.dumps(r) + "\n" for r in keep))


def epoch_rows(metrics_file: Path) -> list[dict]:
    """Every epoch of the run (also those before a resume), from its metrics log."""
    if not metrics_file.exists():
        return []
    return [r for r in map(json.loads, metrics_file.read_text().splitlines()) if "train/loss_epoch" in r]
