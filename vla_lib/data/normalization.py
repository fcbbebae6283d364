"""Normalisation statistics, computed on the training split only, saved as JSON beside the run and in checkpoints."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vla_lib.dims import ALINE_POINTS, POSE_DIMS

QUANTILES = (0.01, 0.5, 0.99)


@dataclass
class NormStats:
    action_mean: list[float]
    action_std: list[float]
    action_quantiles: dict[str, list[float]]
    force_mean: float
    force_std: float
    aline_mean: list[float]  # per A-line point
    aline_std: list[float]
    sessions: list[str]  # the training sessions they came from
    # per action dimension: it never changed in the training split (None: stats written before this field)
    action_held: list[bool] | None = None

    def to_json(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, path: str | Path) -> "NormStats":
        return cls(**json.loads(Path(path).read_text()))

    @classmethod
    def from_dict(cls, values: dict) -> "NormStats":
        return cls(**values)

    def action_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.action_mean, np.float32), np.asarray(self.action_std, np.float32)

    def model_buffers(self) -> dict[str, np.ndarray]:
        """The heads' normalisation buffers (`Stage1Policy(cfg, **stats.model_buffers())`)."""
        (action_mean, action_std), (sensor_mean, sensor_std) = self.action_arrays(), self.sensor_arrays()
        return {"action_mean": action_mean, "action_std": action_std, "sensor_mean": sensor_mean,
                "sensor_std": sensor_std, "action_held": self.held_actions()}

    def held_actions(self) -> np.ndarray:
        """(A,) bool: the dimensions the heads return as their training-split value instead of an output: the gripper
        (past the pose deltas, no training signal) and any pose delta that never changed in the training split (a
        task that moves along z only: an output there could only add noise). Older stats: the gripper alone."""
        held = np.arange(len(self.action_mean)) >= POSE_DIMS
        return held | np.asarray(self.action_held, bool) if self.action_held is not None else held

    def sensor_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        mean = np.concatenate([[self.force_mean], self.aline_mean]).astype(np.float32)
        std = np.concatenate([[self.force_std], self.aline_std]).astype(np.float32)
        return mean, std


# Floors of the standard deviations: a real but small dimension keeps (nearly) its own scale, so its loss weight is not
# cut by orders of magnitude; the floor only guards against dividing by ~0. Units: mm or deg per step for actions.
MIN_ACTION_STD = 1e-3
MIN_SENSOR_STD = 1e-3


def safe_std(std: np.ndarray, floor: float) -> np.ndarray:
    """Clamp to `floor`; only an exactly constant dimension (std 0, e.g. the gripper) takes 1.0, the identity."""
    std = np.asarray(std, np.float64)
    return np.where(std == 0, 1.0, np.maximum(std, floor))


def compute_stats(train_index, max_rows_per_session: int = 20000) -> NormStats:
    """Actions from the training samples (masked steps excluded); force and A-line from the raw sensor rows of the
    training sessions (strided, so a long session costs the same as a short one)."""
    valid = train_index.target_mask
    actions = train_index.targets[valid]  # (M, 7)
    std = safe_std(actions.std(0), MIN_ACTION_STD)
    quant = {str(q): np.quantile(actions, q, axis=0).tolist() for q in QUANTILES}
    forces, alines = [], []
    for session in train_index.sessions.values():
        if session.sensor is None:
            continue
        n = len(session.sensor.times)
        step = max(1, n // max_rows_per_session)
        f = np.asarray(session.sensor.forces[::step], np.float64)
        a = np.asarray(session.sensor.alines[::step], np.float64)
        ok = np.isfinite(f) & np.isfinite(a).all(1)
        forces.append(f[ok]), alines.append(a[ok])
    if forces:
        f, a = np.concatenate(forces), np.concatenate(alines)
        fm, fs = float(f.mean()), float(safe_std(f.std(), MIN_SENSOR_STD))
        am, as_ = a.mean(0), safe_std(a.std(0), MIN_SENSOR_STD)
    else:  # no sensor in training: identity normalisation
        fm, fs, am, as_ = 0.0, 1.0, np.zeros(ALINE_POINTS), np.ones(ALINE_POINTS)
    return NormStats(actions.mean(0).tolist(), std.tolist(), quant, fm, fs, am.tolist(), as_.tolist(),
                     sorted(train_index.sessions), (actions.std(0) == 0).tolist())
