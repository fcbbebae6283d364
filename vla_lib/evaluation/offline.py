"""Offline evaluation on held-out sessions, no teacher forcing: the policy sees only what it would see live
(cached VL features of the frames available at t, the sensor window ending at t), never the target.

Predictors compared on the same samples: the policy, the policy with the sensor removed (null embedding: the
ablation), and the trivial baselines (zero, train mean, last observed delta).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from vla_lib.data.batches import FeatureJoinedDataset, collate
from vla_lib.data.samples import SampleDataset
from vla_lib.evaluation.baselines import last_delta_baseline, train_mean_baseline, zero_baseline
from vla_lib.evaluation.metrics import chunk_metrics
from vla_lib.models.inputs import inputs_from_batch

BASELINES = ("zero", "train_mean", "last_delta")


@torch.no_grad()
def predict_cached(heads, dataset: FeatureJoinedDataset, device, batch_size: int = 256,
                   use_sensor: bool = True) -> np.ndarray:
    """(N, H, 7) physical-unit chunks for every sample of `dataset`, in order."""
    heads = heads.to(device).eval()
    out = []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
        x = inputs_from_batch(batch, device)
        out.append(heads.predict(x if use_sensor else x.without_sensor()).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, heads.config.horizon, 7), np.float32)


@dataclass
class OfflineResult:
    metrics: dict  # JSON-ready
    predictions: dict[str, np.ndarray]  # predictor -> (N, H, 7)
    targets: np.ndarray
    target_mask: np.ndarray
    table: object  # the samples' table (session_id, t, has_sensor, ...)


def evaluate_offline(heads, index, data_cfg, features, stats, device="cpu", batch_size: int = 256,
                     phases: np.ndarray | None = None) -> OfflineResult:
    """`index`: the held-out SampleIndex; `features`: a FeatureTable over its rows; `stats`: the training NormStats;
    `phases`: each sample's phase where the data knows it (None entries elsewhere), for the per-phase ablation."""
    dataset = FeatureJoinedDataset(SampleDataset(index, data_cfg), features)
    n, h = len(index), data_cfg.horizon
    preds = {
        "policy": predict_cached(heads, dataset, device, batch_size),
        "policy_no_sensor": predict_cached(heads, dataset, device, batch_size, use_sensor=False),
        "zero": zero_baseline(n, h, data_cfg.gripper_value),
        "train_mean": train_mean_baseline(n, h, stats.action_mean),
        "last_delta": last_delta_baseline(index, data_cfg),
    }
    mask = index.target_mask
    with_sensor = index.table["has_sensor"].to_numpy(bool)
    metrics = {"n_samples": n, "sessions": sorted(index.sessions), "predictors": {}, "with_sensor_only": {}}
    for name, p in preds.items():
        metrics["predictors"][name] = chunk_metrics(p, index.targets, mask)
        if with_sensor.any():
            sub = chunk_metrics(p[with_sensor], index.targets[with_sensor], mask[with_sensor])
            metrics["with_sensor_only"][name] = {k: sub[k] for k in ("mse", "mae", "first_step_mse")}
    best = min(BASELINES, key=lambda b: metrics["predictors"][b]["mse"])
    policy_mse = metrics["predictors"]["policy"]["mse"]
    metrics["best_baseline"] = best
    metrics["policy_mse_over_best_baseline"] = policy_mse / max(metrics["predictors"][best]["mse"], 1e-12)
    metrics["sensor_ablation"] = sensor_ablation(preds["policy"], preds["policy_no_sensor"], index.targets, mask,
                                                 with_sensor, phases)
    metrics["sensor_ablation_mse_ratio"] = metrics["sensor_ablation"]["mse_ratio"]
    return OfflineResult(metrics, preds, index.targets, mask, index.table)


def sensor_ablation(with_s: np.ndarray, without: np.ndarray, targets: np.ndarray, mask: np.ndarray,
                    has_sensor: np.ndarray, phases: np.ndarray | None) -> dict:
    """MSE without the sensor / with it, on the samples that have sensor data only (elsewhere both predictions are
    the same by construction, which would pull the ratio towards 1), overall and per phase where phases are known."""
    def ratio(rows):
        a = chunk_metrics(with_s[rows], targets[rows], mask[rows])["mse"]
        b = chunk_metrics(without[rows], targets[rows], mask[rows])["mse"]
        return {"samples": int(rows.sum()), "mse_with_sensor": a, "mse_without_sensor": b,
                "mse_ratio": b / max(a, 1e-12)}
    if not has_sensor.any():
        return {"samples": 0, "mse_ratio": None, "per_phase": {}}
    out = ratio(has_sensor)
    known = [p for p in dict.fromkeys(phases[has_sensor]) if p is not None] if phases is not None else []
    out["per_phase"] = {str(p): ratio(has_sensor & (phases == p)) for p in known}
    return out


def summary_table(metrics: dict):
    """One row per predictor: overall, first-step and last-step errors (a pandas DataFrame)."""
    rows = []
    for name, m in metrics["predictors"].items():
        rows.append({"predictor": name, "mse": m["mse"], "mae": m["mae"], "first_step_mse": m["first_step_mse"],
                     "last_step_mse": m["mse_per_step"][-1],
                     "mse_with_sensor": metrics["with_sensor_only"].get(name, {}).get("mse")})
    return pd.DataFrame(rows).set_index("predictor")
