"""Dataset audit: what the recordings really contain, measured from their timestamps (notebook 01).

The original assumed 650 Hz, synchronised clocks and 2 Hz cameras without ever checking; here every figure is
measured per session, and everything that was skipped is listed with the file and the reason.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from vla_lib.data.recorder_formats import DataError, Session, offsets_for, read_session
from vla_lib.data.samples import find_sessions


def _rate(times: np.ndarray) -> float:
    return float((len(times) - 1) / (times[-1] - times[0])) if len(times) > 1 else float("nan")


def audit_session(session: Session, views: list[str]) -> dict:
    rt = session.robot_times
    row = {"session": session.session_id, "layout": session.layout, "duration_s": float(rt[-1] - rt[0]),
           "robot_hz": _rate(rt), "robot_max_gap_ms": float(np.diff(rt).max() * 1e3), "has_sensor": session.has_sensor}
    cam_off = session.camera_offset()
    if session.sensor is not None:
        st = session.sensor.times
        dt = np.diff(st)
        row.update({"sensor_hz": _rate(st), "sensor_median_dt_ms": float(np.median(dt) * 1e3),
                    "sensor_gaps_over_5ms": int((dt > 0.005).sum()), "sensor_max_gap_ms": float(dt.max() * 1e3),
                    "sensor_clock_offset_ms": float(session.clock_offsets["sensor_s"] * 1e3)
                    if "sensor_s" in session.clock_offsets else float("nan")})
    row["camera_clock_offset_ms"] = (float(cam_off * 1e3) if "camera_s" in session.clock_offsets else float("nan"))
    row["clock_offsets"] = session.offsets_source  # file | params | none (taken as 0: reported as an issue)
    if session.robot_recv_times is not None:  # receiver clock minus robot clock: transport latency + offset
        row["robot_recv_minus_origin_ms"] = float(np.median(session.robot_recv_times - rt) * 1e3)
    sync = []
    for view in views:
        ft = session.frames[view].times
        row[f"{view}_frames"] = len(ft)
        row[f"{view}_hz"] = _rate(ft)
        row[f"{view}_max_gap_s"] = float(np.diff(ft).max()) if len(ft) > 1 else float("nan")
        if len(ft):
            ftr = ft + cam_off
            j = np.clip(np.searchsorted(rt, ftr), 1, len(rt) - 1)
            sync.append(np.minimum(np.abs(ftr - rt[j - 1]), np.abs(rt[j] - ftr)))
    row["robot_frame_sync_ms_mean"] = float(np.concatenate(sync).mean() * 1e3) if sync else float("nan")
    row["inter_view_skew_ms_mean"], row["inter_view_skew_ms_max"] = _inter_view_skew(session, views)
    row["issues"] = len(session.issues)
    return row


def _inter_view_skew(session: Session, views: list[str]) -> tuple[float, float]:
    """For each frame of the first present view, the spread of the nearest frames of all other present views."""
    present = [session.frames[v].times for v in views if len(session.frames[v].times)]
    if len(present) < 2:
        return float("nan"), float("nan")
    ref = present[0]
    nearest = [ref]
    for ft in present[1:]:
        j = np.clip(np.searchsorted(ft, ref), 1, len(ft) - 1)
        nearest.append(np.where(np.abs(ft[j - 1] - ref) < np.abs(ft[j] - ref), ft[j - 1], ft[j]))
    spread = np.ptp(np.stack(nearest), axis=0) * 1e3
    return float(spread.mean()), float(spread.max())


def audit_dataset(data_cfg) -> tuple[pd.DataFrame, list[dict], dict[str, Session]]:
    """(one row per readable session, the skip list, the sessions). Unreadable sessions are skips, not crashes."""
    rows, skipped, sessions = [], [], {}
    root = Path(data_cfg.root)
    for group, path in find_sessions(data_cfg):
        try:
            session = read_session(path, data_cfg.check_images, offsets_for(data_cfg, path.name))
        except DataError as e:
            skipped.append({"session": str(path.relative_to(root)), "file": e.path, "reason": e.reason})
            continue
        sid = f"{group.name}/{session.session_id}"
        sessions[sid] = session
        rows.append({"group": group.name, "weight": group.weight, **audit_session(session, data_cfg.views),
                     "session_id": sid})
        for file, reason in session.issues:
            skipped.append({"session": sid, "file": file, "reason": reason})
    return pd.DataFrame(rows), skipped, sessions


def write_audit(out_dir: str | Path, table: pd.DataFrame, skipped: list[dict], extra: dict | None = None) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "audit.csv", index=False)
    summary = {"sessions": len(table), "skipped_or_issues": skipped,
               "per_session": json.loads(table.to_json(orient="records")), **(extra or {})}
    (out / "audit.json").write_text(json.dumps(summary, indent=1, default=float))
    return {**summary, "path": str(out / "audit.json")}


def print_report(table: pd.DataFrame, skipped: list[dict], report_path: str, log=print) -> None:
    """What the terminal needs: per session its streams in one line, every skip and issue with its reason, and where
    the full report (all columns) is."""
    log(f"{len(table)} readable session(s)")
    for _, row in table.iterrows():
        sensor = f"sensor {row['sensor_hz']:.0f} Hz" if row["has_sensor"] else "no sensor"
        views = sum(1 for c in table.columns if c.endswith("_frames") and row[c] > 0)
        log(f"  {row['session_id']}: {row['duration_s']:.1f} s, robot {row['robot_hz']:.0f} Hz, {sensor}, "
            f"{views} view(s) with frames, clock offsets: {row['clock_offsets']}")
    readable = set(table["session_id"]) if len(table) else set()
    dropped = [s for s in skipped if s["session"] not in readable]
    issues = [s for s in skipped if s["session"] in readable]
    log(f"{len(dropped)} session(s) skipped" + (":" if dropped else ""))
    for s in dropped:
        log(f"  SKIPPED {s['session']}: {s['file']}: {s['reason']}")
    log(f"{len(issues)} issue(s) in readable sessions" + (":" if issues else ""))
    for s in issues:
        log(f"  {s['session']}: {s['file']}: {s['reason']}")
    log(f"full report: {report_path}")


# ---------------------------------------------------------------------------------------------------------------
# Plots (matplotlib; each returns the figure so notebooks can show and save it)
# ---------------------------------------------------------------------------------------------------------------
def plot_sensor_window(window: np.ndarray, valid: np.ndarray, window_s: float, title: str = ""):
    import matplotlib.pyplot as plt

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
    import matplotlib.pyplot as plt

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


ACTION_NAMES = ["dx [mm]", "dy [mm]", "dz [mm]", "da [deg]", "db [deg]", "dr [deg]", "gripper"]


def plot_action_deltas(targets: np.ndarray, mask: np.ndarray):
    import matplotlib.pyplot as plt

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
    import matplotlib.pyplot as plt

    from vla_lib.data.recorder_formats import load_image

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
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    import io

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
