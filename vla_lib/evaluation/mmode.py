"""Closed-loop episodes in M-mode (notebook 05): what the sensor streamed during an episode, what the runtime
commanded and what the arm did, kept for the episodes that get drawn and saved beside the closed-loop results.

A kept episode is `EpisodeResult.sensor`: the A-lines on the waterfall's columns only (float16: a display copy,
~1.6 MB an episode, not the 650 Hz stream), the force and the truth tip height on the same rows, the arm's z at 100 Hz
and each tick's commanded z (the measured pose plus the limited step sent); times in s from the controller's start,
as the trace's."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vla_lib.atomic import atomic_write
from vla_lib.data.mmode import plot_mmode, sensor_task_overlays, waterfall_columns

ORDER = ("policy", "policy_no_sensor", "demonstrator", "scripted")  # the sensor's effect first: with it, without it


def shown(predictors) -> list[str]:
    """The two predictors the M-mode view puts side by side (the only ones whose episode is kept)."""
    return sorted(predictors, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))[:2]


def episode_sensor(rig, start: float) -> dict:
    """The M-mode data of the episode `rig` ran (a SimRig at the episode's end)."""
    times, forces, alines = rig.sensor_log()
    _, rows, keep = waterfall_columns(times)
    rows = rows[keep]
    robot_t, pose = rig.robot_log()
    sent = [c for c in rig.executed if np.isfinite(c.target[2])]  # no pose yet: nothing was commanded
    return {"t": times[rows] - start, "alines": alines[rows].astype(np.float16), "force": forces[rows].copy(),
            "tip_z": rig.tip_at(times[rows])[:, 2], "surface_z": float(rig.ep.surface_z),
            "robot_t": robot_t - start, "executed_z": pose[:, 2].copy(),
            "command_t": np.array([c.t_send for c in sent]) - start,
            "commanded_z": np.array([c.target[2] for c in sent])}


def mmode_path(results_path: str | Path) -> Path:
    """Where the kept episodes of a closed-loop results file go: beside it (arrays: not for the JSON)."""
    p = Path(results_path)
    return p.with_name(f"{p.stem}_mmode.npz")


def save_sensor_logs(results: dict, path: str | Path) -> Path | None:
    """Every kept episode of `results` (predictor -> EpisodeResults) into one .npz (None: none kept, and an older
    file there is removed: it would attach another evaluation's episodes)."""
    arrays = {f"{name}.{r.seed}.{k}": np.asarray(v) for name, eps in results.items() for r in eps
              if r.sensor is not None for k, v in r.sensor.items()}
    if not arrays:
        Path(path).unlink(missing_ok=True)
        return None

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: given a name, numpy would append ".npz" to the temporary one
            np.savez_compressed(f, **arrays)

    return atomic_write(path, write)


def load_sensor_logs(results: dict, path: str | Path) -> None:
    """Attach the episodes kept in `path` (if it exists) to their EpisodeResults (same predictor and seed)."""
    if not Path(path).exists():
        return
    kept: dict = {}
    with np.load(path) as z:
        for key in z.files:
            name, seed, field = key.split(".", 2)
            kept.setdefault((name, int(seed)), {})[field] = z[key]
    for name, eps in results.items():
        for r in eps:
            if (name, r.seed) in kept:
                r.sensor = {k: (float(v) if v.ndim == 0 else v) for k, v in kept[(name, r.seed)].items()}


def plot_episode_mmode(result, task, axes=None):
    """One kept closed-loop episode in M-mode, the truth surface and the tip drawn from the sensor task's model."""
    s = result.sensor
    return plot_mmode(s["t"], s["alines"], s["force"], executed_z=(s["robot_t"], s["executed_z"]),
                      commanded_z=(s["command_t"], s["commanded_z"]), axes=axes,
                      title=f"{result.predictor}: episode {result.seed}, final depth {result.final_depth_mm:.2f} mm",
                      **sensor_task_overlays(task, s["surface_z"], s["tip_z"]))


def plot_closed_loop_mmode(result, task, predictors=None, seed: int | None = None):
    """Side by side, the same episode (`seed`: the first kept) for two predictors (default: `shown` of those with a
    kept episode); None when no episode was kept (results saved before episodes were kept)."""
    import matplotlib.pyplot as plt

    kept = {name: {r.seed: r for r in eps if r.sensor is not None} for name, eps in result.results.items()}
    names = [n for n in (predictors or shown(n for n in kept if kept[n])) if kept.get(n)]
    if not names:
        return None
    if seed is None:  # an episode both kept, else the first's
        seed = min(set(kept[names[0]]).intersection(*(kept[n] for n in names[1:2])) or kept[names[0]])
    names = [n for n in names if seed in kept[n]][:2]
    fig, axes = plt.subplots(2, len(names), figsize=(7.5 * len(names), 6.5), sharex=True, squeeze=False,
                             height_ratios=[2.2, 1], layout="constrained")
    for j, name in enumerate(names):
        plot_episode_mmode(kept[name][seed], task, axes=axes[:, j])
    return fig
