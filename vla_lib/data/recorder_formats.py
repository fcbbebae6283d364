"""Readers for the real recorder's on-disk layouts (recv_all, Captures / ZED_Captures, New_dataset episodes).

Family A, sensor sessions `recv_all_YYYYMMDD_HHMMSS/`:
    View1..View4/{left,right}/<cam>_<ts>.jpg, View5/<oak>_<ts>.jpg, robot_state_*.csv,
    sensor_data_<session>_<firstTs>.npz {timestamps, send_timestamps, forces, alines (N,1025)}
Family B, no-sensor sessions `Captures{i}` / `ZED_Captures_{i}th`:
    view1..view4/{left,right}/*.jpg, optional view5_oak/*.jpg, robot_rt_*.csv (epoch_s|timestamp, joint_angle_1..6,
    EE_x..EE_r)
Family C, "New_dataset" episodes `episode_YYYYMMDD_HHMMSS/` (the rig's episode collector):
    metadata.json, images/View1..View5/<ts>.jpg (left only: the collector maps ZED frames by serial), robot_states.csv
    (the recv_all columns, `force` for `force_placeholder`), sensor_data.npz {timestamps (N,) = each window's last
    sample, data (N, W, 1026) trailing windows saved every ~200 ms}. The windows overlap, so the raw stream is rebuilt:
    each window contributes only the rows after the previous window's last row (found by value), stamped evenly
    between the two windows' last-sample stamps (the per-sample stamps were never saved); the first window, and any
    window after a gap longer than W samples, is stamped back from its last stamp at `sensor_hz` (metadata).
    All-zero rows (padding) are dropped. Rows stay memory-mapped in the windows' file.
Optional in A and B: `clock_offsets.json` {"camera_s": .., "sensor_s": ..}, seconds to add to that stream's stamps to put
it on the robot clock (`vla_lib.rig.record` writes it; the rig's own recorder saves none, so its sessions lack it).

Everything is read straight from the session folder. Sensor arrays are memory-mapped, never loaded whole.
A broken file raises `DataError` naming it; the dataset builder turns that into a reported skip.
The file-level readers (camera folders, JPEGs, sensor NPZs, `DataError`) are in `recorder_files`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from vla_lib.data.recorder_files import (DataError, FrameList, SensorStream, check_increasing, read_episode_sensor,
                                         read_sensor_npz, read_views)

VIEW_KEYS = [f"View{i}_{s}" for i in range(1, 5) for s in ("left", "right")] + ["View5"]
_TS_AS_NAME = re.compile(r"^(\d+(?:\.\d+)?)\.jpe?g$", re.IGNORECASE)  # New_dataset: images/ViewN/<ts>.jpg


@dataclass
class Session:
    path: Path
    layout: str  # "recv_all", "captures" or "new_dataset"
    robot_times: np.ndarray  # (N,) float64, robot clock (origin timestamps)
    pose: np.ndarray  # (N, 6) float64: x, y, z mm; a, b, r deg
    joints: np.ndarray  # (N, 6)
    frames: dict[str, FrameList]
    sensor: SensorStream | None
    robot_recv_times: np.ndarray | None = None  # receiver clock, when the CSV has it
    clock_offsets: dict[str, float] = field(default_factory=dict)
    offsets_source: str = "file"  # "file" (clock_offsets.json), "params" (data.clock_offsets) or "none" (taken as 0)
    issues: list[tuple[str, str]] = field(default_factory=list)  # (file, what was skipped and why)

    @property
    def session_id(self) -> str:
        return self.path.name

    @property
    def has_sensor(self) -> bool:
        return self.sensor is not None

    def camera_offset(self) -> float:
        return float(self.clock_offsets.get("camera_s", 0.0))

    def sensor_offset(self) -> float:
        return float(self.clock_offsets.get("sensor_s", 0.0))


# ---------------------------------------------------------------------------------------------------------------
def detect_layout(path: Path) -> str:
    if path.name.startswith("episode_") or ((path / "metadata.json").exists() and (path / "robot_states.csv").exists()):
        return "new_dataset"
    if path.name.startswith("recv_all_") or any(path.glob("robot_state_*.csv")):
        return "recv_all"
    if any(path.glob("robot_rt_*.csv")) or re.match(r"(ZED_)?Captures", path.name):
        return "captures"
    raise DataError(path, "not a recorder session (no robot_state_*.csv or robot_rt_*.csv)")


NO_OFFSETS = ("no clock offsets recorded (the rig's recorder saves none) and none given in "
              "data.clock_offsets: camera and sensor stamps are taken as robot-clock time (offset 0)")


def read_session(path: str | Path, check_images: bool = True, clock_offsets: dict | None = None) -> Session:
    """`clock_offsets`: {camera_s, sensor_s} to use when the session has no clock_offsets.json (from params)."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(path, "session folder does not exist")
    layout = detect_layout(path)
    issues: list[tuple[str, str]] = []
    if layout == "new_dataset":
        return read_new_dataset_episode(path, check_images, issues)
    if layout == "recv_all":
        robot_t, pose, joints, recv_t = read_robot_state_csv(_one(path, "robot_state_*.csv"), issues)
        frames = read_views(path, {f"View{i}_{s}": f"View{i}/{s}" for i in range(1, 5) for s in ("left", "right")}
                            | {"View5": "View5"}, check_images, issues)
        npz = sorted(path.glob("sensor_data_*.npz"))
        sensor = read_sensor_npz(npz[0]) if npz else None
        if not npz:
            issues.append((str(path), "no sensor_data_*.npz: session has no sensor"))
    else:
        robot_t, pose, joints, recv_t = read_robot_rt_csv(_one(path, "robot_rt_*.csv"), issues)
        frames = read_views(path, {f"View{i}_{s}": f"view{i}/{s}" for i in range(1, 5) for s in ("left", "right")}
                            | {"View5": "view5_oak"}, check_images, issues)
        sensor = None
    if not any(len(f.times) for f in frames.values()):
        raise DataError(path, "no camera frames in any view")
    offsets_file = path / "clock_offsets.json"
    if offsets_file.exists():
        offsets, source = json.loads(offsets_file.read_text()), "file"
    elif clock_offsets:
        offsets, source = dict(clock_offsets), "params"
    else:
        offsets, source = {}, "none"
        issues.append((str(path), NO_OFFSETS))
    return Session(path, layout, robot_t, pose, joints, frames, sensor, recv_t, offsets, source, issues)


def offsets_for(data_cfg, session_folder: str) -> dict | None:
    """The params' clock offsets for a session folder: its own entry, else the "*" default, else None."""
    table = data_cfg.clock_offsets
    return table.get(session_folder, table.get("*"))


def _one(path: Path, pattern: str) -> Path:
    found = sorted(path.glob(pattern))
    if not found:
        raise DataError(path, f"no {pattern} in session folder (empty or incomplete session)")
    return found[0]


# ---------------------------------------------------------------------------------------------------------------
# Robot state CSVs
# ---------------------------------------------------------------------------------------------------------------
RECV_ALL_POSE = ["pose_x", "pose_y", "pose_z", "pose_a", "pose_b", "pose_r"]
RECV_ALL_JOINTS = [f"joint_{i}" for i in range(1, 7)]
CAPTURES_POSE = ["EE_x", "EE_y", "EE_z", "EE_a", "EE_b", "EE_r"]
CAPTURES_JOINTS = [f"joint_angle_{i}" for i in range(1, 7)]


def read_robot_state_csv(path: Path, issues: list) -> tuple:
    df = _read_csv(path, ["origin_timestamp", *RECV_ALL_JOINTS, *RECV_ALL_POSE])
    df = _drop_nan_rows(df, path, issues)
    t = df["origin_timestamp"].to_numpy(np.float64)
    check_increasing(t, path)
    recv = df["recv_timestamp"].to_numpy(np.float64) if "recv_timestamp" in df else None
    return t, df[RECV_ALL_POSE].to_numpy(np.float64), df[RECV_ALL_JOINTS].to_numpy(np.float64), recv


def read_robot_rt_csv(path: Path, issues: list) -> tuple:
    df = _read_csv(path, [*CAPTURES_JOINTS, *CAPTURES_POSE])
    time_col = "epoch_s" if "epoch_s" in df else "timestamp" if "timestamp" in df else None
    if time_col is None:
        raise DataError(path, "no time column (expected 'epoch_s' or 'timestamp')")
    df = _drop_nan_rows(df, path, issues)
    t = df[time_col].to_numpy(np.float64)
    check_increasing(t, path)
    return t, df[CAPTURES_POSE].to_numpy(np.float64), df[CAPTURES_JOINTS].to_numpy(np.float64), None


def _read_csv(path: Path, required: list[str]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(path, f"unreadable CSV: {e}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(path, f"missing columns {missing}")
    if len(df) < 2:
        raise DataError(path, f"only {len(df)} rows")
    try:
        return df.apply(pd.to_numeric, errors="raise")
    except ValueError as e:
        raise DataError(path, f"non-numeric value: {e}") from None


def _drop_nan_rows(df: pd.DataFrame, path: Path, issues: list) -> pd.DataFrame:
    bad = df.isna().any(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad.to_numpy())
        issues.append((str(path), f"dropped {len(rows)} row(s) with NaN (first data rows {rows[:5].tolist()})"))
        df = df[~bad]
    if len(df) < 2:
        raise DataError(path, "fewer than 2 valid rows after dropping NaN rows")
    return df


# ---------------------------------------------------------------------------------------------------------------
# Family C: New_dataset episodes
# ---------------------------------------------------------------------------------------------------------------
def read_new_dataset_episode(path: Path, check_images: bool = True, issues: list | None = None) -> Session:
    issues = [] if issues is None else issues
    meta_file = path / "metadata.json"
    try:
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    except json.JSONDecodeError as e:
        raise DataError(meta_file, f"unreadable JSON: {e}") from None
    robot_csv = path / "robot_states.csv"
    if not robot_csv.exists():
        raise DataError(path, "no robot_states.csv in episode folder")
    robot_t, pose, joints, recv_t = read_robot_state_csv(robot_csv, issues)
    frames = read_views(path, {f"View{i}_left": f"images/View{i}" for i in range(1, 5)} | {"View5": "images/View5"},
                        check_images, issues, _TS_AS_NAME)
    for i in range(1, 5):  # the collector names frames by timestamp per view only: right images are not kept
        frames[f"View{i}_right"] = FrameList(np.zeros(0), [])
    if not any(len(f.times) for f in frames.values()):
        raise DataError(path, "no camera frames in any view")
    npz = path / "sensor_data.npz"
    sensor = read_episode_sensor(npz, float(meta.get("sensor_hz", 650))) if npz.exists() else None
    if sensor is None:
        issues.append((str(path), "no sensor_data.npz: episode has no sensor"))
    return Session(path, "new_dataset", robot_t, pose, joints, frames, sensor, recv_t, {}, issues)
