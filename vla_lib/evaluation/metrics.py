"""Chunk metrics over the 6 pose dimensions (the constant gripper carries no signal), masked by valid steps.

`pred`, `true`: (N, H, 7) in physical units (mm, deg); `mask`: (N, H) bool. Every mean is over valid (sample, step)
pairs only, so chunks padded past an episode's end never count.
"""
from __future__ import annotations

import numpy as np

from vla_lib.dims import POSE_DIMS

DIM_NAMES = ["dx_mm", "dy_mm", "dz_mm", "da_deg", "db_deg", "dr_deg"]


def chunk_metrics(pred: np.ndarray, true: np.ndarray, mask: np.ndarray) -> dict:
    err = np.asarray(pred, np.float64)[..., :POSE_DIMS] - np.asarray(true, np.float64)[..., :POSE_DIMS]
    m = np.asarray(mask, bool)
    sq, ab = err**2, np.abs(err)
    valid = sq[m]  # (M, 6)
    per_step_n = m.sum(0).clip(min=1)[:, None]
    first = m[:, 0]
    return {
        "mse": float(valid.mean()),
        "mae": float(ab[m].mean()),
        "mse_per_dim": dict(zip(DIM_NAMES, valid.mean(0).tolist())),
        "mae_per_dim": dict(zip(DIM_NAMES, ab[m].mean(0).tolist())),
        "mse_per_step": ((sq * m[..., None]).sum(0) / per_step_n).mean(1).tolist(),
        "mae_per_step": ((ab * m[..., None]).sum(0) / per_step_n).mean(1).tolist(),
        "first_step_mse": float(sq[first, 0].mean()),
        "first_step_mae": float(ab[first, 0].mean()),
        "first_step_corr": dict(zip(DIM_NAMES, correlation_per_dim(np.asarray(pred)[first, 0],
                                                                    np.asarray(true)[first, 0]))),
    }


def correlation_per_dim(pred: np.ndarray, true: np.ndarray) -> list[float | None]:
    """Pearson correlation over time per pose dimension; None where either side is constant (e.g. the zero
    baseline), since a correlation is undefined there."""
    out = []
    for d in range(POSE_DIMS):
        p, t = np.asarray(pred[:, d], np.float64), np.asarray(true[:, d], np.float64)
        if len(p) < 2 or p.std() < 1e-12 or t.std() < 1e-12:
            out.append(None)
        else:
            out.append(float(np.corrcoef(p, t)[0, 1]))
    return out
