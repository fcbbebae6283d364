"""Training samples cut from sessions by timestamp, and the torch Dataset over them.

One sample per anchor time t (every `anchor_stride_s`):
- per configured view, the latest frame with stamp <= t (its staleness recorded; no frame yet -> masked slot);
- the sensor samples in (t - window, t] resampled onto a fixed grid, with a validity mask (no sensor -> has_sensor
  False and an all-False mask: the model picks its learned null embedding, it never sees bare zeros as data);
- the contact memory at t (`data.contact`: where the force began, run over the session's anchors as the runtime runs
  it over its ticks);
- the target: `horizon` steps of `action_dt_s` end-effector pose deltas, angles wrapped, plus the constant gripper.
Chunks that would run past the last robot sample are dropped by default (`chunk_past_end: drop`): the scripted
demonstrations stop before the retract, so padding would teach a stop the robot never made. `pad` keeps them, with
the missing steps zero and masked out of the loss.

The index is built once from the session files (CSV parsed once per session, sensor memory-mapped); loading a sample
reads only its sensor rows.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from vla_lib.data.contact import contact_track
from vla_lib.data.recorder_files import DataError
from vla_lib.data.recorder_formats import Session, offsets_for, read_session
from vla_lib.data.timeline import (latest_frame_index, pose_deltas, pose_history, resample_sensor_window,
                                   sensor_coverage)
from vla_lib.dims import CONTACT_DIMS, SENSOR_CHANNELS


@dataclass
class SampleIndex:
    """All samples of a dataset: a table (one row per sample), the targets, and the sessions they came from."""

    table: pd.DataFrame
    targets: np.ndarray  # (N, H, 7) physical units (mm, deg, gripper)
    target_mask: np.ndarray  # (N, H) bool
    frame_index: np.ndarray  # (N, V) int, -1 = masked view
    history: np.ndarray  # (N, K, 6) the robot's own last K pose deltas ending at t (proprioception, oldest first)
    contact: np.ndarray  # (N, CONTACT_DIMS) the contact memory at t (zeros before contact and without sensor)
    sessions: dict[str, Session]
    views: list[str]
    data_root: Path
    skipped: list[dict] = field(default_factory=list)  # sessions that could not be used, with the reason
    lines: list[str] = field(default_factory=list)  # the build log: one "Added: ..." line per session

    def __len__(self) -> int:
        return len(self.table)

    def subset(self, session_ids: list[str]) -> "SampleIndex":
        keep = self.table["session_id"].isin(session_ids).to_numpy()
        return SampleIndex(self.table[keep].reset_index(drop=True), self.targets[keep], self.target_mask[keep],
                           self.frame_index[keep], self.history[keep], self.contact[keep],
                           {s: self.sessions[s] for s in session_ids if s in self.sessions}, self.views, self.data_root, self.skipped, self.lines)

    def view_paths(self, i: int) -> list[Path | None]:
        session = self.sessions[self.table.at[i, "session_id"]]
        return [session.frames[v].paths[j] if j >= 0 else None for v, j in zip(self.views, self.frame_index[i])]

    def unique_cache_keys(self) -> pd.DataFrame:
        """One row per distinct VL input (views + instruction): what the cache has to encode."""
        return self.table.drop_duplicates("cache_key").reset_index()


def find_sessions(data_cfg) -> list[tuple[object, Path]]:
    root = Path(data_cfg.root)
    found = []
    for group in data_cfg.groups:
        for path in sorted(root.glob(group.glob)):
            if path.is_dir():
                found.append((group, path))
    if data_cfg.max_sessions:
        found = found[: data_cfg.max_sessions]
    return found


def build_index(data_cfg, verbose: bool = False) -> SampleIndex:
    """Samples of every usable session. JPEGs are checked per `data.check_images` (one policy for every step);
    a session that cannot be used is skipped with its reason (`index.skipped`, and in the log when verbose)."""
    data_cfg.validate()
    root = Path(data_cfg.root)
    pairs = find_sessions(data_cfg)
    if not pairs:
        raise DataError(root, f"no session folders match the configured groups "
                              f"({[g.glob for g in data_cfg.groups]})")
    tables, targets, tmasks, frames, histories, contacts, sessions, skipped, lines = [], [], [], [], [], [], {}, [], []
    for group, path in pairs:
        try:
            session = read_session(path, data_cfg.check_images, offsets_for(data_cfg, path.name))
            part = _session_samples(session, group, data_cfg, root)
        except DataError as e:
            skipped.append({"session": str(path.relative_to(root)), "file": e.path, "reason": e.reason})
            continue
        if part is None:
            skipped.append({"session": str(path.relative_to(root)), "file": str(path),
                            "reason": "too short for one sample (anchor stride, sensor window and horizon)"})
            continue
        table, tgt, tmask, fidx, hist, touch = part
        sessions[table["session_id"].iat[0]] = session
        tables.append(table), targets.append(tgt), tmasks.append(tmask), frames.append(fidx), histories.append(hist)
        contacts.append(touch)
        prefix = f"[Priority {group.weight:g}x] " if group.weight != 1.0 else ""
        sensor_word = "WITH sensor" if session.has_sensor and data_cfg.sensor_enabled else "NO sensor"
        lines.append(f"{prefix}Added: {session.session_id} ({len(table)} samples, {sensor_word})"
                     + ("" if session.offsets_source != "none" else "; clock offsets: none recorded, taken as 0"))
    if verbose:
        print("\n".join(lines))
        for s in skipped:
            print(f"Skipped: {s['session']}: {s['file']}: {s['reason']}")
    if not tables:
        raise DataError(root, f"no usable sessions; skipped: {skipped}")
    table = pd.concat(tables, ignore_index=True)
    return SampleIndex(table, np.concatenate(targets), np.concatenate(tmasks), np.concatenate(frames),
                       np.concatenate(histories), np.concatenate(contacts), sessions,
                       list(data_cfg.views), root, skipped, lines)


def _session_samples(session: Session, group, cfg, root: Path):
    rt = session.robot_times
    has_sensor = session.has_sensor and cfg.sensor_enabled
    start = rt[0]
    if has_sensor:
        start = max(start, session.sensor.times[0] + session.sensor_offset() + cfg.sensor_window_s)
    first_frame = min((f.times[0] for v, f in session.frames.items() if v in cfg.views and len(f.times)), default=None)
    if first_frame is None:
        raise DataError(session.path, f"none of the configured views {cfg.views} has frames")
    start = max(start, first_frame + session.camera_offset())  # at least one view must have a frame
    last = rt[-1] - (cfg.horizon * cfg.action_dt_s if cfg.chunk_past_end == "drop" else cfg.action_dt_s)
    if last < start:
        return None
    anchors = np.round(np.arange(start, last + 1e-9, cfg.anchor_stride_s), 6)
    n, h = len(anchors), cfg.horizon
    deltas = pose_deltas(rt, session.pose, anchors, h, cfg.action_dt_s)
    step_end = anchors[:, None] + cfg.action_dt_s * np.arange(1, h + 1)[None, :]
    tmask = step_end <= rt[-1] + 1e-9
    deltas[~tmask] = 0.0
    tgt = np.concatenate([deltas, np.full((n, h, 1), cfg.gripper_value)], -1).astype(np.float32)

    session_id = f"{group.name}/{session.session_id}"
    cam_offset = session.camera_offset()
    fidx = np.full((n, len(cfg.views)), -1, np.int64)
    staleness = np.full((n, len(cfg.views)), np.nan)
    for v, view in enumerate(cfg.views):
        fl = session.frames.get(view)
        if fl is None:
            raise DataError(session.path, f"unknown view '{view}' (known: {sorted(session.frames)})")
        if len(fl.times):
            ft = fl.times + cam_offset
            fidx[:, v] = latest_frame_index(ft, anchors)
            ok = fidx[:, v] >= 0
            staleness[ok, v] = anchors[ok] - ft[fidx[ok, v]]
    ids = {view: frame_ids(session.frames[view].paths, root) for view in cfg.views}
    keys = [_cache_key(group.instruction, [ids[view][j] if j >= 0 else None for view, j in zip(cfg.views, row)])
            for row in fidx]
    if has_sensor:
        st = session.sensor.times + session.sensor_offset()
        coverage = sensor_coverage(st, anchors, cfg.sensor_window_s, cfg.sensor_window_size, cfg.sensor_max_gap_s)
        touch = contact_track(st, session.sensor.forces, rt, session.pose, anchors, cfg)
    else:
        coverage, touch = np.zeros(n), np.zeros((n, CONTACT_DIMS), np.float32)
    table = pd.DataFrame({
        "session_id": session_id, "group": group.name, "weight": float(group.weight),
        "instruction": group.instruction, "t": anchors, "t_rel": anchors - rt[0], "has_sensor": has_sensor,
        "sensor_coverage": coverage, "cache_key": keys, "views_present": (fidx >= 0).sum(1),
        "max_staleness": np.where(fidx >= 0, staleness, -np.inf).max(1),
    })
    for v, view in enumerate(cfg.views):
        table[f"staleness_{view}"] = staleness[:, v]
    hist = pose_history(rt, session.pose, anchors, cfg.derived("history_steps"), cfg.action_dt_s)
    return table, tgt, tmask, fidx, hist, touch


def frame_ids(paths: list[Path], root: Path) -> list[str]:
    """A frame's identity: its path under the data root plus its size and modification time, so that a JPEG written
    again under the same name is encoded again (a content hash would read every JPEG on each index build)."""
    out = []
    for p in paths:
        st = p.stat()
        out.append(f"{p.relative_to(root).as_posix()}:{st.st_size}:{st.st_mtime_ns}")
    return out


def _cache_key(instruction: str, frame_ids: list[str | None]) -> str:
    """Stable identity of one VL input: the instruction and each view's frame (None = masked slot)."""
    payload = json.dumps({"instruction": instruction, "frames": frame_ids}, sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------------------------
# The torch Dataset
# ---------------------------------------------------------------------------------------------------------------
class SampleDataset:
    """Map-style dataset: item i -> dict of numpy arrays and metadata. VL features are joined later (cache).

    The table's columns are copied into numpy arrays once: a per-item pandas `iloc` costs more than the sensor
    resampling itself, and training at thousands of samples/s reads every column of every item.
    """

    def __init__(self, index: SampleIndex, data_cfg, augmentation=None):
        """`augmentation`: a `data.augment.TrainingAugmentation` for the training split only (None: windows as
        recorded)."""
        self.index = index
        self.cfg = data_cfg
        self.augmentation = augmentation
        table = index.table
        self._session_ids = table["session_id"].to_numpy()
        self._t = table["t"].to_numpy(np.float64)
        self._has_sensor = table["has_sensor"].to_numpy(bool)
        self._weight = table["weight"].to_numpy(np.float32)
        self._keys = table["cache_key"].to_numpy()
        self._view_mask = index.frame_index >= 0
        self._sensor_times = {sid: s.sensor.times + s.sensor_offset() for sid, s in index.sessions.items()
                              if s.has_sensor}

    def __len__(self) -> int:
        return len(self.index)

    def sensor_window(self, session_id: str, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(values, valid) of the SensorWindow at t (all invalid for a session without sensor)."""
        cfg = self.cfg
        times = self._sensor_times.get(session_id)
        if times is None:
            n = cfg.sensor_window_size
            return np.zeros((n, SENSOR_CHANNELS), np.float32), np.zeros(n, bool)
        s = self.index.sessions[session_id].sensor
        window, valid, _ = resample_sensor_window(times, s.forces, s.alines, t, cfg.sensor_window_s,
                                                  cfg.sensor_window_size, cfg.sensor_max_gap_s)
        return window, valid

    def __getitem__(self, i: int) -> dict:
        session_id, t = self._session_ids[i], float(self._t[i])
        window, valid = self.sensor_window(session_id, t)
        if self.augmentation is not None:
            window, valid = self.augmentation(window, valid, i)
        return {
            "index": i,
            "cache_key": self._keys[i],
            "sensor": window,
            "sensor_mask": valid,
            "has_sensor": bool(self._has_sensor[i]) and bool(valid.any()),
            "history": self.index.history[i],
            "contact": self.index.contact[i],
            "target": self.index.targets[i],
            "target_mask": self.index.target_mask[i],
            "view_mask": self._view_mask[i],
            "weight": float(self._weight[i]),
            "session_id": session_id,
            "t": t,
        }
