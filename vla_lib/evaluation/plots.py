"""Figures of notebook 04 (each returns a matplotlib Figure; the notebook shows and saves it)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from vla_lib.dims import POSE_DIMS
from vla_lib.evaluation.metrics import DIM_NAMES

COLOURS = {"policy": "C0", "policy_no_sensor": "C1", "zero": "C7", "train_mean": "C2", "last_delta": "C3"}


def first_action_over_session(result, session_id: str):
    """Predicted vs true first action of each chunk along one held-out session (position and orientation)."""
    rows = np.nonzero(result.table["session_id"].to_numpy() == session_id)[0]
    t = result.table["t_rel"].to_numpy()[rows]
    fig, axes = plt.subplots(2, 3, figsize=(15, 6), sharex=True)
    for d, ax in enumerate(axes.flat):
        ax.plot(t, result.targets[rows, 0, d], "k-", lw=2, label="true")
        for name in ("policy", "policy_no_sensor", "last_delta"):
            ax.plot(t, result.predictions[name][rows, 0, d], color=COLOURS[name], lw=1, label=name)
        ax.set(title=DIM_NAMES[d], xlabel="s into episode" if d >= 3 else None)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"first action of each chunk: {session_id}")
    fig.tight_layout()
    return fig


def error_per_dimension(metrics: dict):
    names = list(metrics["predictors"])
    fig, ax = plt.subplots(figsize=(12, 3.8))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        values = [metrics["predictors"][name]["mae_per_dim"][d] for d in DIM_NAMES]
        ax.bar(np.arange(POSE_DIMS) + k * width, values, width, label=name, color=COLOURS.get(name))
    ax.set_xticks(np.arange(POSE_DIMS) + 0.4 - width / 2, DIM_NAMES)
    ax.set(ylabel="MAE (mm or deg)", yscale="log", title="error per dimension, held-out sessions")
    ax.legend(fontsize=7)
    return fig


def error_per_horizon(metrics: dict):
    """The per-step error curve (left) and first-step vs full-horizon error (right)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 3.8))
    names = list(metrics["predictors"])
    for name in names:
        m = metrics["predictors"][name]
        a.plot(np.arange(1, len(m["mse_per_step"]) + 1), m["mse_per_step"], "o-", label=name, color=COLOURS.get(name))
    a.set(xlabel="horizon step (x 100 ms)", ylabel="MSE", yscale="log", title="error per horizon step")
    a.legend(fontsize=7)
    x = np.arange(len(names))
    b.bar(x - 0.2, [metrics["predictors"][n]["first_step_mse"] for n in names], 0.4, label="first step")
    b.bar(x + 0.2, [metrics["predictors"][n]["mse"] for n in names], 0.4, label="full horizon")
    b.set_xticks(x, names, rotation=20, fontsize=8)
    b.set(yscale="log", ylabel="MSE", title="first step vs full horizon")
    b.legend(fontsize=7)
    fig.tight_layout()
    return fig


def realtime_timeline(report):
    t = np.array([x["t"] for x in report.ticks])
    t = t - t[0]
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 3.5))
    a.plot(t, [x["latency_ms"] for x in report.ticks], "o-", ms=3)
    a.axhline(report.summary["action_period_ms"], color="r", ls="--", label="deadline")
    a.set(xlabel="s", ylabel="ms", title="action-step latency", yscale="log")
    a.legend()
    b.plot(t, [x["staleness_s"] for x in report.ticks], label="frames' age")
    b.plot(t, [x["feature_age_s"] for x in report.ticks], label="since features ready")
    b.set(xlabel="s", ylabel="s", title="feature staleness at each action step")
    b.legend()
    fig.tight_layout()
    return fig


def latency_table_plot(table, action_step_ms: float):
    fig, ax = plt.subplots(figsize=(7, 4))
    for (w, h), part in table.groupby(["width", "height"], sort=False):
        ax.plot(part["views"], part["vl_ms_p50"], "o-", label=f"{w}x{h}")
    ax.axhline(action_step_ms, color="k", ls=":", label=f"action step {action_step_ms:.1f} ms")
    ax.set(xlabel="views", ylabel="VL update ms (median)", yscale="log", title="VL update latency")
    ax.legend(fontsize=8)
    return fig
