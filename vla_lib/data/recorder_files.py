"""File-level readers shared by the recorder layouts (`recorder_formats` reads the session folders with them):
the `DataError` every reader raises, camera folders and JPEG checks, and the memory-mapped sensor NPZs, both
recv_all's flat stream and New_dataset's overlapping windows (rebuilt as `recorder_formats`' docstring describes).

Sensor arrays are memory-mapped, never loaded whole. A broken file raises `DataError` naming it.
"""
from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vla_lib.dims import ALINE_POINTS

_TS_IN_NAME = re.compile(r"_(\d+(?:\.\d+)?)\.jpe?g$", re.IGNORECASE)


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


def check_increasing(t: np.ndarray, path: Path) -> None:
    """Raise `DataError` at the first timestamp that does not come after the one before it."""
    back = np.flatnonzero(np.diff(t) <= 0)
    if len(back):
        i = int(back[0])
        raise DataError(path, f"timestamps not increasing at row {i + 1} ({t[i]:.3f} -> {t[i + 1]:.3f}); "
                              f"{len(back)} such step(s)")


# ---------------------------------------------------------------------------------------------------------------
# Camera folders
# ---------------------------------------------------------------------------------------------------------------
def read_views(session: Path, folders: dict[str, str], check_images: bool, issues: list,
               pattern: re.Pattern = _TS_IN_NAME) -> dict[str, FrameList]:
    """Each view key's frames from its folder (key -> folder relative to `session`), sorted by the time in the name."""
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
    check_increasing(t, path)
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
# New_dataset sensor windows
# ---------------------------------------------------------------------------------------------------------------
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
    """A New_dataset `sensor_data.npz` of overlapping windows as one stream (recorder_formats: Family C)."""
    try:
        last_ts = np.asarray(npz_memmap(path, "timestamps"), np.float64)
        data = npz_memmap(path, "data")
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise DataError(path, f"unreadable or truncated NPZ: {e}") from None
    if data.ndim != 3 or data.shape[2] != 1 + ALINE_POINTS or len(last_ts) != data.shape[0]:
        raise DataError(path, f"'data' has shape {data.shape}, expected ({len(last_ts)}, W, {1 + ALINE_POINTS})")
    check_increasing(last_ts, path)
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
    check_increasing(t, path)
    forces = np.asarray(data[win, row, 0], np.float32)
    return SensorStream(path, t, t.copy(), forces, WindowRows(data, win, row, slice(1, None)))
