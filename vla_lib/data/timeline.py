"""Alignment by timestamp: the one implementation used by training, evaluation and the live loop.

All times are on the robot clock (stream stamps plus their session's clock offset).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from vla_lib.dims import POSE_DIMS

__all__ = ["SensorWindow", "latest_frame_index", "sensor_grid", "resample_sensor_window", "sensor_coverage", "pose_deltas",
           "pose_history", "wrap_deg"]


def wrap_deg(x: np.ndarray) -> np.ndarray:
    """Wrap angles to (-180, 180]."""
    return 180.0 - np.mod(180.0 - np.asarray(x), 360.0)


def latest_frame_index(frame_times: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Index of the latest frame with time <= t, or -1 where no frame exists yet (never a future frame)."""
    return np.searchsorted(frame_times, t, side="right") - 1


def sensor_grid(t: float, window_s: float, n_points: int) -> np.ndarray:
    """n equally spaced points in (t - window, t], the last one at t."""
    return t - window_s + window_s * np.arange(1, n_points + 1) / n_points


def _window_bounds(times: np.ndarray, t: float, window_s: float) -> tuple[int, int]:
    """Raw sample range [lo, hi) with times in (t - window, t]."""
    return int(np.searchsorted(times, t - window_s, side="right")), int(np.searchsorted(times, t, side="right"))


class SensorWindow(NamedTuple):
    """A sensor window on the fixed grid: the one representation of "no sensor sample here", from the data through
    the simulated, replayed and live rigs to the heads. `values` (..., W, C): raw force + A-line, 0 where no sample;
    `valid` (..., W) bool: the grid points that carry a sample. Leading batch dimensions allowed."""

    values: np.ndarray
    valid: np.ndarray

    def batched(self) -> "SensorWindow":
        """One window as a batch of one."""
        return SensorWindow(self.values[None], self.valid[None])

    def invalid_where(self, points: np.ndarray) -> "SensorWindow":
        """A copy with the grid points `points` (bool, (W,)) marked as carrying no sample."""
        return SensorWindow(np.where(points[:, None], 0.0, self.values).astype(np.float32), self.valid & ~points)


def resample_sensor_window(times: np.ndarray, forces: np.ndarray, alines: np.ndarray, t: float, window_s: float,
                           n_points: int, max_gap_s: float) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """The raw samples in (t - window, t] linearly resampled onto the fixed grid.

    Returns (window (n, 1 + A) float32, valid mask (n,), raw range [lo, hi)). A grid point is valid only when a raw
    sample lies within `max_gap_s` of it; invalid points are zero *and* masked. Rows with NaN count as missing.
    Only the rows of the window are read from the memory-mapped arrays.
    """
    lo, hi = _window_bounds(times, t, window_s)
    grid = sensor_grid(t, window_s, n_points)
    out = np.zeros((n_points, 1 + alines.shape[1]), np.float32)
    if hi <= lo:
        return out, np.zeros(n_points, bool), (lo, hi)
    rows = np.concatenate([np.asarray(forces[lo:hi], np.float32)[:, None], np.asarray(alines[lo:hi], np.float32)], 1)
    ok = np.isfinite(rows).all(1)
    ts, rows = times[lo:hi][ok], rows[ok]
    if len(ts) == 0:
        return out, np.zeros(n_points, bool), (lo, hi)
    j = np.clip(np.searchsorted(ts, grid, side="right") - 1, 0, len(ts) - 1)
    j1 = np.minimum(j + 1, len(ts) - 1)
    span = ts[j1] - ts[j]
    w = np.where(span > 0, np.clip((grid - ts[j]) / np.where(span > 0, span, 1), 0, 1), 0.0)[:, None]
    out[:] = rows[j] * (1 - w) + rows[j1] * w
    nearest = np.minimum(np.abs(grid - ts[j]), np.abs(grid - ts[j1]))
    valid = nearest <= max_gap_s
    out[~valid] = 0.0
    return out, valid, (lo, hi)


def sensor_coverage(times: np.ndarray, anchors: np.ndarray, window_s: float, n_points: int,
                    max_gap_s: float) -> np.ndarray:
    """Fraction of valid grid points per anchor, from timestamps alone (no A-line reads): for the audit/index."""
    grid = anchors[:, None] - window_s + window_s * np.arange(1, n_points + 1)[None, :] / n_points
    j = np.searchsorted(times, grid, side="right")
    before = times[np.clip(j - 1, 0, len(times) - 1)]
    after = times[np.clip(j, 0, len(times) - 1)]
    lo_edge = anchors[:, None] - window_s  # samples at or before t - window are outside (t - window, t]
    ok_before = (j > 0) & (before > lo_edge) & (grid - before <= max_gap_s)
    ok_after = (j < len(times)) & (after <= anchors[:, None]) & (after - grid <= max_gap_s)
    return (ok_before | ok_after).mean(1)


def pose_deltas(robot_times: np.ndarray, pose: np.ndarray, anchors: np.ndarray, horizon: int, dt: float,
                known_until: np.ndarray | None = None) -> np.ndarray:
    """(N, horizon, 6): pose(t + k dt) - pose(t + (k-1) dt), k = 1..horizon, interpolated on the robot stamps.

    Angles are unwrapped along the trajectory before interpolating (so 179 -> -179 is +2, not -358) and each delta is
    wrapped to (-180, 180]. `known_until` (N,): per row, only robot samples stamped at or before it may be used; a
    query time after the last such sample takes that sample's pose (held), never an interpolation towards the next.
    """
    unwrapped = pose.copy()
    unwrapped[:, 3:] = np.unwrap(pose[:, 3:], period=360.0, axis=0)
    times = np.asarray(anchors, np.float64)[:, None] + dt * np.arange(horizon + 1)[None, :]
    if known_until is not None:
        last = np.searchsorted(robot_times, np.asarray(known_until, np.float64), side="right") - 1
        last_time = robot_times[np.clip(last, 0, len(robot_times) - 1)]
        # before the first robot sample nothing is known: np.interp holds the first pose (zero deltas)
        times = np.minimum(times, np.where(last >= 0, last_time, robot_times[0])[:, None])
    interp = np.stack([np.interp(times, robot_times, unwrapped[:, d]) for d in range(POSE_DIMS)], -1)
    deltas = np.diff(interp, axis=1)
    deltas[..., 3:] = wrap_deg(deltas[..., 3:])
    return deltas


def pose_history(robot_times: np.ndarray, pose: np.ndarray, anchors, steps: int, dt: float) -> np.ndarray:
    """(N, steps, 6) the last `steps` pose deltas at each anchor t (oldest first), from robot samples stamped at or
    before t only: what a live robot can know at t. They end at the last robot sample <= t (up to one robot period
    before t), never at an interpolation towards the sample after t, and each spans a full `dt` (so the newest delta
    is a velocity like the others). Before the first robot sample the pose is held (zero deltas)."""
    anchors = np.asarray(anchors, np.float64)
    if steps == 0:
        return np.zeros((len(anchors), 0, POSE_DIMS), np.float32)
    last = np.searchsorted(robot_times, anchors, side="right") - 1
    end = np.where(last >= 0, robot_times[np.clip(last, 0, None)], anchors)
    return pose_deltas(robot_times, pose, end - steps * dt, steps, dt, known_until=anchors).astype(np.float32)
