"""The OCT M-mode view: the A-line waterfall of a whole episode (time across, A-line depth index down from the fibre
face), with the tip and the tissue surface drawn on it where the truth is known, and below it the force and the
commanded and executed z. One drawing for recorded sessions (notebook 01, `audit_plots`) and closed-loop episodes
(notebook 05, `evaluation/mmode.py`): both hand it arrays.

In the sensor task the A-line index of a reflection is `tissue.aline_index` of its distance from the fibre
face, which sits `oct_standoff_mm` behind the tip: the tip is a fixed depth of the waterfall and the surface moves
towards it as the needle descends (`sensor_task_overlays`)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from vla_lib.data.tissue import aline_index

MAX_COLUMNS = 800  # time columns drawn (about the figure's width in pixels): ~8 ms each over a 6 s episode


def sensor_task_overlays(task, surface_z: float, tip_z: np.ndarray) -> dict:
    """Overlays in A-line index for tip heights `tip_z` (mm, on the waterfall's times): the surface (where its
    reflection must be), the tip (fixed: the standoff), and where the surface sits with the tip at the target depth."""
    standoff = task.oct_standoff_mm
    return {"surface": aline_index(np.asarray(tip_z, np.float64) - surface_z + standoff),
            "tip": float(aline_index(standoff)), "target": float(aline_index(standoff - task.target_depth_mm))}


def waterfall_columns(times: np.ndarray, n: int = MAX_COLUMNS):
    """(column times, row per column, has data) on an even grid of at most `n` columns: the nearest sample per
    column, none where the nearest is further than a column away, so lost packets stay blank."""
    times = np.asarray(times, np.float64)
    n = int(min(n, len(times)))
    grid = np.linspace(times[0], times[-1], n)
    step = (times[-1] - times[0]) / max(n - 1, 1)
    j = np.clip(np.searchsorted(times, grid), 1, len(times) - 1)
    j = np.where(np.abs(times[j - 1] - grid) <= np.abs(times[j] - grid), j - 1, j)
    near = np.abs(times[j] - grid) <= step
    return grid, j, near


def log_intensity(alines: np.ndarray, rows: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """(depth, columns) log10 intensity of the chosen rows (only those are read: recorded A-lines are memory-mapped),
    NaN where a column has no sample."""
    image = np.log10(np.clip(np.asarray(alines[rows], np.float32), 1.0, None)).T
    image[:, ~keep] = np.nan
    return image


def plot_mmode(times, alines, force=None, tip=None, surface=None, target=None, executed_z=None, commanded_z=None,
               axes=None, title: str = ""):
    """The waterfall (top) and force / z over time (bottom). `times` (N,) s, `alines` (N, depth) rows, `force` (N,);
    `tip`, `surface`, `target`: A-line indices, scalars or (N,) on `times` (None: not known); `executed_z`,
    `commanded_z`: (times, z) pairs on their own clocks. `axes`: (waterfall, lines) to draw into; returns the figure."""
    times = np.asarray(times, np.float64)
    if axes is None:
        fig, axes = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True, height_ratios=[2.2, 1], layout="constrained")
    img_ax, line_ax = axes
    grid, rows, keep = waterfall_columns(times)
    image = log_intensity(alines, rows, keep)
    lo, hi = np.nanpercentile(image, [1, 99.9]) if keep.any() else (0, 1)
    img_ax.imshow(image, aspect="auto", origin="upper", cmap="gray", vmin=lo, vmax=hi, interpolation="nearest",
                  extent=[grid[0], grid[-1], image.shape[0] - 0.5, -0.5])
    _overlays(img_ax, times, tip=tip, surface=surface, target=target)
    img_ax.set(ylabel="A-line depth index (from the fibre)", title=title or "OCT M-mode (log intensity)",
               ylim=(image.shape[0] - 0.5, -0.5))
    _force_and_z(line_ax, times, force, executed_z, commanded_z)
    return img_ax.figure


OVERLAYS = {"surface": dict(color="C1", ls="--", alpha=0.6, label="surface (truth)"),
            "target": dict(color="C2", ls=":", label="surface with the tip at the target depth"),
            "tip": dict(color="C3", ls="-", label="needle tip")}


def _overlays(ax, times, **lines) -> None:
    drawn = False
    for name, style in OVERLAYS.items():
        if lines[name] is not None:
            ax.plot(times, np.broadcast_to(lines[name], times.shape), lw=1, **style)
            drawn = True
    if drawn:
        ax.legend(fontsize=7, loc="upper right")


def _force_and_z(ax, times, force, executed_z, commanded_z) -> None:
    if force is not None:
        ax.plot(times, force, color="C0", lw=0.8, label="force")
        ax.set_ylabel("force (N)", color="C0")
    ax.set_xlabel("s")
    if executed_z is None and commanded_z is None:
        return
    z_ax = ax.twinx()
    if commanded_z is not None:
        z_ax.step(*commanded_z, where="post", color="C1", lw=1, label="commanded z")
    if executed_z is not None:
        z_ax.plot(*executed_z, color="k", lw=1, label="executed z")
    z_ax.set_ylabel("z (mm)")
    z_ax.legend(fontsize=7, loc="upper right")
