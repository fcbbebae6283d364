"""Trivial predictors a policy has to beat: zero motion, the training-set mean delta, the last observed delta."""
from __future__ import annotations

import numpy as np

from vla_lib.data.timeline import pose_history
from vla_lib.dims import ACTION_DIM, GRIPPER, POSE_DIMS


def zero_baseline(n: int, horizon: int, gripper: float) -> np.ndarray:
    out = np.zeros((n, horizon, ACTION_DIM), np.float32)
    out[..., GRIPPER] = gripper
    return out


def train_mean_baseline(n: int, horizon: int, action_mean) -> np.ndarray:
    return np.broadcast_to(np.asarray(action_mean, np.float32), (n, horizon, ACTION_DIM)).copy()


def last_delta_baseline(index, data_cfg) -> np.ndarray:
    """Repeat, for every step, the robot's own last delta pose(t) - pose(t - dt), from robot samples at or before t
    (`pose_history`): what a constant-velocity extrapolation of the measured pose gives."""
    out = np.zeros((len(index), data_cfg.horizon, ACTION_DIM), np.float32)
    out[..., GRIPPER] = data_cfg.gripper_value
    sids = index.table["session_id"].to_numpy()
    t = index.table["t"].to_numpy(np.float64)
    for sid in np.unique(sids):
        rows = np.nonzero(sids == sid)[0]
        s = index.sessions[sid]
        last = pose_history(s.robot_times, s.pose, t[rows], 1, data_cfg.action_dt_s)[:, 0]
        out[rows, :, :POSE_DIMS] = last[:, None, :]
    return out
