"""The audit's figures (matplotlib; each returns the figure so the notebook shows it and saves it) and the
episode browser. matplotlib and ipywidgets are imported here only: the audit itself runs without them."""
from __future__ import annotations

import io
from pathlib import Path

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np

from vla_lib.data.mmode import plot_mmode, sensor_task_overlays
from vla_lib.data.recorder_files import load_image
from vla_lib.data.recorder_formats import Session
from vla_lib.data.scenarios import load_episode

TRUTH = "sensor_task_truth.json"

def plot_sensor_window(window: np.ndarray, valid: np.ndarray, window_s: float, title: str = ""):
    t_ms = (np.arange(1, len(window) + 1) / len(window) - 1) * window_s * 1e3
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.5))
    a.plot(t_ms, np.where(valid, window[:, 0], np.nan), ".-")
    a.set(xlabel="time to anchor t [ms]", ylabel="force", title=f"force {title}")
    b.imshow(np.where(valid[:, None], window[:, 1:], np.nan).T, aspect="auto", origin="lower",
             extent=[t_ms[0], t_ms[-1], 0, window.shape[1] - 1], cmap="magma")
    b.set(xlabel="time to anchor t [ms]", ylabel="A-line depth index", title="A-line (masked gaps blank)")
    fig.tight_layout()
    return fig


def plot_camera_timelines(session: Session, views: list[str], seconds: float = 10.0):
    t0 = session.robot_times[0]
    fig, ax = plt.subplots(figsize=(11, 0.45 * (len(views) + 2) + 1))
    for k, view in enumerate(views):
        ft = session.frames[view].times + session.camera_offset() - t0
        ft = ft[ft < seconds]
        ax.eventplot([ft], lineoffsets=k, linelengths=0.7)
    if session.sensor is not None:
        st = session.sensor.times + session.sensor_offset() - t0
        dt = np.diff(st)
        gaps = st[1:][(dt > 0.005)]
        ax.eventplot([gaps[gaps < seconds]], lineoffsets=len(views), linelengths=0.7, colors="red")
    ax.set_yticks(range(len(views) + 1), views + ["sensor gaps >5 ms"])
    ax.set(xlabel="time since robot start [s] (robot clock)", title=f"camera frames: {session.session_id}")
    fig.tight_layout()
    return fig


def mmode_session(sessions: dict[str, Session]) -> Session | None:
    """The session to show in M-mode: the first sensor-task session (its truth places the surface), else the first
    with a sensor (None: no session has one)."""
    with_sensor = [s for s in sessions.values() if s.has_sensor]
    return next((s for s in with_sensor if (Path(s.path) / TRUTH).exists()), with_sensor[0] if with_sensor else None)


def plot_session_mmode(session: Session, task=None):
    """A recorded session's M-mode view on the robot clock (s since its first pose). The executed z is the recorded
    pose; the recorder keeps no commands. With the sensor task's truth (and its `task`), the surface and the tip."""
    t0 = session.robot_times[0]
    st = session.sensor.times + session.sensor_offset() - t0
    rt = session.robot_times - t0
    z = session.pose[:, 2]
    overlays = {}
    if task is not None and (Path(session.path) / TRUTH).exists():
        overlays = sensor_task_overlays(task, load_episode(session.path).surface_z, np.interp(st, rt, z))
    return plot_mmode(st, session.sensor.alines, np.asarray(session.sensor.forces), executed_z=(rt, z),
                      title=f"OCT M-mode: {session.session_id}", **overlays)


ACTION_NAMES = ["dx [mm]", "dy [mm]", "dz [mm]", "da [deg]", "db [deg]", "dr [deg]", "gripper"]


def plot_action_deltas(targets: np.ndarray, mask: np.ndarray):
    first = targets[:, 0][mask[:, 0]]
    fig, axes = plt.subplots(1, 6, figsize=(15, 2.8))
    for d, ax in enumerate(axes):
        ax.hist(first[:, d], bins=50)
        ax.set(title=ACTION_NAMES[d])
    fig.suptitle("distribution of 100 ms action deltas (first step of each chunk)")
    fig.tight_layout()
    return fig


def plot_sample(index, dataset, i: int):
    """The configured views at t, the sensor window, and the 8-step target over the pose trace."""
    item = dataset[i]
    row = index.table.iloc[i]
    session = index.sessions[row["session_id"]]
    fig = plt.figure(figsize=(15, 8), layout="constrained")
    top, middle, bottom = fig.subfigures(3, 1, height_ratios=[1, 1, 1.1])
    paths = index.view_paths(i)
    for ax, view, p in zip(top.subplots(1, len(paths)), index.views, paths):
        if p is not None:
            ax.imshow(load_image(p))
            ax.set_title(f"{view}: stale {row[f'staleness_{view}'] * 1e3:.0f} ms", fontsize=8)
        else:
            ax.set_title(f"{view}: masked (no frame yet)", fontsize=8)
        ax.axis("off")
    a, b = middle.subplots(1, 2)
    valid = item["sensor_mask"]
    a.plot(np.where(valid, item["sensor"][:, 0], np.nan), ".-")
    a.set(title=f"force window (has_sensor={item['has_sensor']}, {valid.mean():.0%} valid)", xlabel="grid point")
    b.imshow(item["sensor"][:, 1:].T, aspect="auto", origin="lower", cmap="magma")
    b.set(title="A-line window", xlabel="grid point", ylabel="depth")
    t = row["t"]
    rt = session.robot_times
    near = (rt > t - 2) & (rt < t + 2)
    steps = np.arange(0, index.targets.shape[1] + 1) * 0.1
    for d, (ax, name) in enumerate(zip(bottom.subplots(1, 3), ["x", "y", "z"])):
        ax.plot(rt[near] - t, session.pose[near, d], label="pose")
        p0 = np.interp(t, rt, session.pose[:, d])
        ax.plot(steps, p0 + np.concatenate([[0], np.cumsum(item["target"][:, d])]), "o-", ms=3, label="target chunk")
        ax.axvline(0, color="k", lw=0.5)
        ax.set(title=f"{name} [mm]", xlabel="s from t")
        ax.legend(fontsize=7)
    fig.suptitle(f"{row['session_id']} t={row['t_rel']:.1f}s")
    return fig


def episode_browser(index, dataset, session_id: str | None = None):
    """An ipywidgets time slider over one session: views, sensor window and pose. Headless-safe (papermill)."""
    session_id = session_id or index.table["session_id"].iat[0]
    rows = np.flatnonzero(index.table["session_id"].to_numpy() == session_id)

    def render(sample: int) -> bytes:
        fig = plot_sample(index, dataset, int(rows[sample]))
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=70)
        plt.close(fig)
        return buf.getvalue()

    # Frames go to an Image widget as PNG bytes: no output capture, so it renders the same under papermill.
    slider = widgets.IntSlider(0, 0, len(rows) - 1, description="sample")
    image = widgets.Image(value=render(0), format="png")
    slider.observe(lambda change: setattr(image, "value", render(change["new"])), names="value")
    return widgets.VBox([slider, image])
