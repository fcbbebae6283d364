"""Dataset audit: what the recordings really contain, measured from their timestamps (notebook 01).

Nothing is assumed about the rates or the clocks (nominally a 650 Hz sensor, 2 Hz cameras, synchronised clocks):
every figure is measured per session, and everything that was skipped is listed with the file and the reason.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from vla_lib.data.recorder_files import DataError
from vla_lib.data.recorder_formats import Session, offsets_for, read_session
from vla_lib.data.samples import find_sessions
from vla_lib.jsonio import write_json


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
    return {**summary, "path": str(write_json(out / "audit.json", summary))}


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
