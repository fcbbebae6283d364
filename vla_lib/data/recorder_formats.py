"""Readers for the real recorder's on-disk layouts (recv_all, Captures / ZED_Captures, New_dataset episodes).

Family A, sensor sessions `recv_all_YYYYMMDD_HHMMSS/`:
    View1..View4/{left,right}/<cam>_<ts>.jpg, View5/<oak>_<ts>.jpg, robot_state_*.csv,
    sensor_data_<session>_<firstTs>.npz {timestamps, send_timestamps, forces, alines (N,1025)}
Family B, no-sensor sessions `Captures{i}` / `ZED_Captures_{i}th`:
    view1..view4/{left,right}/*.jpg, optional view5_oak/*.jpg, robot_rt_*.csv (epoch_s|timestamp, joint_angle_1..6,
    EE_x..EE_r)
Family C, "New_dataset" episodes `episode_YYYYMMDD_HHMMSS/` (Optimized_Data_Collector.py):
    metadata.json, images/View1..View5/<ts>.jpg (left only: the collector maps ZED frames by serial), robot_states.csv
    (the recv_all columns, `force` for `force_placeholder`), sensor_data.npz {timestamps (N,) = each window's last
    sample, data (N, W, 1026) trailing windows saved every ~200 ms}. The windows overlap, so the raw stream is rebuilt:
    each window contributes only the rows after the previous window's last row (found by value), stamped evenly
    between the two windows' last-sample stamps (the per-sample stamps were never saved); the first window, and any
    window after a gap longer than W samples, is stamped back from its last stamp at `sensor_hz` (metadata).
    All-zero rows (padding) are dropped. Rows stay memory-mapped in the windows' file.
Optional in A and B: `clock_offsets.json` {"camera_s": .., "sensor_s": ..}, seconds to add to that stream's stamps to put
it on the robot clock (the original receiver measured the sensor offset but only printed it; our recorder keeps it).

Everything is read straight from the session folder. Sensor arrays are memory-mapped, never loaded whole.
A broken file raises `DataError` naming it; the dataset builder turns that into a reported skip.
"""
from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from vla_lib.dims import ALINE_POINTS

VIEW_KEYS = [f"View{i}_{s}" for i in range(1, 5) for s in ("left", "right")] + ["View5"]
_TS_IN_NAME = re.compile(r"_(\d+(?:\.\d+)?)\.jpe?g$", re.IGNORECASE)
_TS_AS_NAME = re.compile(r"^(\d+(?:\.\d+)?)\.jpe?g$", re.IGNORECASE)  # New_dataset: images/ViewN/<ts>.jpg


class DataError(RuntimeError):
    """Bad input: always names the file (or folder) at fault."""

    def __init__(self, path: Path | str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass
class FrameList:
    """One camera view: capture timestamps (sender clock, sorted) and the JPEG paths."""

    times: np.ndarray
    paths: list[Path]


@dataclass
class SensorStream:
    path: Path
    times: np.ndarray  # (N,) float64, sensor clock
    send_times: np.ndarray
    forces: np.ndarray  # (N,) float32, memory-mapped
    alines: np.ndarray  # (N, 1025) float32, memory-mapped


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


NO_OFFSETS = ("no clock offsets recorded (the original recorder never saved them) and none given in "
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
        frames = _read_views(path, {f"View{i}_{s}": f"View{i}/{s}" for i in range(1, 5) for s in ("left", "right")}
                             | {"View5": "View5"}, check_images, issues)
        npz = sorted(path.glob("sensor_data_*.npz"))
        sensor = read_sensor_npz(npz[0]) if npz else None
        if not npz:
            issues.append((str(path), "no sensor_data_*.npz: session has no sensor"))
    else:
        robot_t, pose, joints, recv_t = read_robot_rt_csv(_one(path, "robot_rt_*.csv"), issues)
        frames = _read_views(path, {f"View{i}_{s}": f"view{i}/{s}" for i in range(1, 5) for s in ("left", "right")}
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
    _check_increasing(t, path)
    recv = df["recv_timestamp"].to_numpy(np.float64) if "recv_timestamp" in df else None
    return t, df[RECV_ALL_POSE].to_numpy(np.float64), df[RECV_ALL_JOINTS].to_numpy(np.float64), recv


def read_robot_rt_csv(path: Path, issues: list) -> tuple:
    df = _read_csv(path, [*CAPTURES_JOINTS, *CAPTURES_POSE])
    time_col = "epoch_s" if "epoch_s" in df else "timestamp" if "timestamp" in df else None
    if time_col is None:
        raise DataError(path, "no time column (expected 'epoch_s' or 'timestamp')")
    df = _drop_nan_rows(df, path, issues)
    t = df[time_col].to_numpy(np.float64)
    _check_increasing(t, path)
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


def _check_increasing(t: np.ndarray, path: Path) -> None:
    back = np.flatnonzero(np.diff(t) <= 0)
    if len(back):
        i = int(back[0])
        raise DataError(path, f"timestamps not increasing at row {i + 1} ({t[i]:.3f} -> {t[i + 1]:.3f}); "
                              f"{len(back)} such step(s)")


# ---------------------------------------------------------------------------------------------------------------
# Camera folders
# ---------------------------------------------------------------------------------------------------------------
def _read_views(session: Path, folders: dict[str, str], check_images: bool, issues: list,
                pattern: re.Pattern = _TS_IN_NAME) -> dict[str, FrameList]:
    frames = {}
    for key, rel in folders.items():
        folder = session / rel
        if not folder.is_dir():
            # Right images are optional in the real recorder; report, mask later.
            issues.append((str(folder), "view folder missing: slot masked"))
            frames[key] = FrameList(np.zeros(0), [])
            continue
        items = []
        for p in folder.iterdir():
            if p.suffix.lower() not in (".jpg", ".jpeg"):
                continue
            m = pattern.search(p.name)
            if not m:
                issues.append((str(p), "no timestamp in file name: skipped"))
                continue
            if check_images:
                problem = jpeg_problem(p)
                if problem:
                    issues.append((str(p), f"{problem}: frame skipped"))
                    continue
            items.append((float(m.group(1)), p))
        items.sort()
        frames[key] = FrameList(np.array([t for t, _ in items], np.float64), [p for _, p in items])
    return frames


def jpeg_problem(path: Path) -> str | None:
    """Cheap structural check (start and end markers) so that a truncated JPEG is found without decoding it."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 2))
            tail = f.read(2)
    except OSError as e:
        return f"unreadable ({e})"
    if head != b"\xff\xd8":
        return "not a JPEG (bad start marker)"
    if tail != b"\xff\xd9":
        return "truncated JPEG (no end marker)"
    return None


def load_image(path: Path):
    """Decode one frame; a corrupt file raises DataError naming it."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise DataError(path, f"corrupt image: {e}") from None


# ---------------------------------------------------------------------------------------------------------------
# Sensor NPZ, memory-mapped
# ---------------------------------------------------------------------------------------------------------------
def read_sensor_npz(path: Path) -> SensorStream:
    keys = ("timestamps", "send_timestamps", "forces", "alines")
    try:
        arrays = {k: npz_memmap(path, k) for k in keys}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise DataError(path, f"unreadable or truncated NPZ: {e}") from None
    n = len(arrays["timestamps"])
    if n < 2:
        raise DataError(path, f"only {n} sensor samples")
    for k in ("send_timestamps", "forces"):
        if arrays[k].shape != (n,):
            raise DataError(path, f"'{k}' has shape {arrays[k].shape}, expected ({n},)")
    if arrays["alines"].ndim != 2 or arrays["alines"].shape != (n, ALINE_POINTS):
        raise DataError(path, f"'alines' has shape {arrays['alines'].shape}, expected ({n}, {ALINE_POINTS})")
    t = np.asarray(arrays["timestamps"], np.float64)
    _check_increasing(t, path)
    return SensorStream(path, t, np.asarray(arrays["send_timestamps"], np.float64), arrays["forces"],
                        arrays["alines"])


def npz_memmap(path: Path, key: str) -> np.ndarray:
    """Memory-map one array of an uncompressed `np.savez` file (np.load ignores mmap_mode for .npz).

    Written by hand because numpy offers no mmap for zip members; a compressed member falls back to a full read.
    """
    with zipfile.ZipFile(path) as zf:
        try:
            info = zf.getinfo(f"{key}.npy")
        except KeyError:
            raise ValueError(f"no array '{key}' (has {[n[:-4] for n in zf.namelist()]})") from None
        if info.compress_type != zipfile.ZIP_STORED:
            with zf.open(info) as f:
                return np.lib.format.read_array(f)
        with open(path, "rb") as raw:
            raw.seek(info.header_offset)
            local = raw.read(30)
            if local[:4] != b"PK\x03\x04":
                raise ValueError(f"bad local header for '{key}'")
            name_len = int.from_bytes(local[26:28], "little")
            extra_len = int.from_bytes(local[28:30], "little")
            start = info.header_offset + 30 + name_len + extra_len
            raw.seek(start)
            version = np.lib.format.read_magic(raw)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(raw)
            offset = raw.tell()
            raw.seek(0, 2)
            needed = offset + int(np.prod(shape)) * dtype.itemsize
            if raw.tell() < needed:
                raise EOFError(f"'{key}' truncated ({raw.tell()} bytes, need {needed})")
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


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
    frames = _read_views(path, {f"View{i}_left": f"images/View{i}" for i in range(1, 5)} | {"View5": "images/View5"},
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


class WindowRows:
    """Rows of a (N, W, C) memory-mapped window array selected by (window, row) pairs, sliced lazily: behaves like
    an (M, len(columns)) array for slicing, fancy indexing and `np.asarray`."""

    def __init__(self, data: np.ndarray, win: np.ndarray, row: np.ndarray, columns: slice):
        self.data, self.win, self.row, self.columns = data, win, row, columns
        width = len(range(*columns.indices(data.shape[2])))
        self.shape = (len(win), width)
        self.ndim, self.dtype = 2, data.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, tuple):
            return self[key[0]][(slice(None), *key[1:])]
        return np.asarray(self.data[self.win[key], self.row[key], self.columns])

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def read_episode_sensor(path: Path, sensor_hz: float = 650.0) -> SensorStream:
    try:
        last_ts = np.asarray(npz_memmap(path, "timestamps"), np.float64)
        data = npz_memmap(path, "data")
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise DataError(path, f"unreadable or truncated NPZ: {e}") from None
    if data.ndim != 3 or data.shape[2] != 1 + ALINE_POINTS or len(last_ts) != data.shape[0]:
        raise DataError(path, f"'data' has shape {data.shape}, expected ({len(last_ts)}, W, {1 + ALINE_POINTS})")
    _check_increasing(last_ts, path)
    segments = []  # (window index, its new rows, whether they follow the previous window's last row)
    prev_row = None
    for i in range(len(last_ts)):
        window = np.asarray(data[i])
        real = np.any(window != 0, axis=1)  # all-zero rows are padding
        if not real.any():
            continue
        start, follows = int(np.argmax(real)), False
        if prev_row is not None:
            same = np.flatnonzero((window == prev_row).all(1))
            if len(same):
                start, follows = int(same[-1]) + 1, True
        new = np.arange(start, window.shape[0])
        segments.append((i, new[real[new]], follows))
        prev_row = window[-1].copy()
    # the effective rate (drops included) from windows that follow one another; nominal if there are none
    rates = [len(new) / (last_ts[i] - last_ts[j]) for (j, _, _), (i, new, f) in zip(segments, segments[1:])
             if f and len(new) and last_ts[i] > last_ts[j]]
    rate = float(np.median(rates)) if rates else sensor_hz
    wins, rows, times, prev_ts = [], [], [], None
    for i, new, follows in segments:
        if len(new):
            k = len(new)
            if follows:  # spread evenly between the two windows' last-sample stamps
                t = prev_ts + (last_ts[i] - prev_ts) * np.arange(1, k + 1) / k
            else:  # first window or after a gap: back from its last stamp at the effective rate
                t = last_ts[i] - (new[-1] - new) / rate
                if prev_ts is not None:
                    keep = t > prev_ts
                    new, t = new[keep], t[keep]
            wins.append(np.full(len(new), i)), rows.append(new), times.append(t)
        prev_ts = float(last_ts[i])
    if not times or sum(map(len, times)) < 2:
        raise DataError(path, "fewer than 2 sensor samples in the windows")
    win, row, t = np.concatenate(wins), np.concatenate(rows), np.concatenate(times)
    _check_increasing(t, path)
    forces = np.asarray(data[win, row, 0], np.float32)
    return SensorStream(path, t, t.copy(), forces, WindowRows(data, win, row, slice(1, None)))
