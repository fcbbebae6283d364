"""The closed-loop robustness matrix: every condition (nominal, and each perturbation level that
`closed_loop.robustness` names, from `data/perturbations.py`) for every closed-loop predictor.

- `run_matrix`: one trained run's matrix, {condition: {predictor: cell}}, into its metrics.json["robustness"]; the
  nominal row is the run's own closed loop, each perturbed row the same predictors on the same held-out episode seeds
  with the perturbation applied (run_closed_loop calls it when `closed_loop.robustness.enabled`);
- `aggregate`: many runs' matrices (a sweep's training seeds) as mean ± std per group, {group: {condition:
  {predictor: stats}}} (metrics.json["robustness"] of the run that owns the sweep: sweep.report.robustness_summary);
- `targets`: per cell, the policy's success where the demonstrator succeeds and the cost of removing the sensor; `table` and `plot_heatmap`: what notebook 05 shows.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vla_lib.config import PREDICTORS, WEIGHTLESS
from vla_lib.data.configuration_robustness import NOMINAL
from vla_lib.jsonio import write_json

CELL = ("success_rate", "depth_error_mm", "peak_force_n", "peak_force_n_max", "episodes", "stopped_episodes")
STATS = ("success_rate", "depth_error_mm", "peak_force_n")  # mean and std over seeds
SUCCESS_TARGET = 0.9  # the policy's success wherever the reference (the demonstrator) reaches it
ABLATION_TARGET = 2.0  # depth error with the sensor removed / with it


def run_matrix(cfg, evaluate, nominal: dict, log=print) -> dict:
    """One run's matrix; `nominal`: the run's closed-loop metrics (the first row); `evaluate(cfg)`: the closed loop
    on a config (run_closed_loop passes its own, with the run's policy and frame cache: the perturbed rows reuse the
    frames they share), so this module needs nothing of closed_loop's."""
    from vla_lib.data.perturbations import apply_perturbation

    matrix = {NOMINAL: {p: _cell(m) for p, m in nominal.items()}}
    conditions = cfg.closed_loop.robustness.conditions()
    for k, (family, level) in enumerate(conditions, 1):
        log(f"[robustness {k}/{len(conditions)}] {family}/{level}")
        result = evaluate(apply_perturbation(cfg, family, level))
        matrix[f"{family}/{level}"] = {p: _cell(m) for p, m in result.metrics.items()}
    write_json(Path(cfg.run_dir) / "metrics.json", merge=True, values={"robustness": matrix})
    return matrix


def _cell(summary: dict) -> dict:
    return {k: summary[k] for k in CELL}


def aggregate(runs: list[dict], shared=WEIGHTLESS) -> dict:
    """Mean ± std over runs. Each run: {"group": what differs from the others but the seed (e.g. augment_on),
    "shared_key": the settings a weightless predictor's result depends on, "matrix": run_matrix's}. A predictor in
    `shared` runs in one run per shared_key only (sweep.grid): every group with that key gets its cells."""
    cells: dict = {}
    for run in runs:
        for condition, predictors in run["matrix"].items():
            for predictor, cell in predictors.items():
                groups = ([r["group"] for r in runs if r["shared_key"] == run["shared_key"]]
                          if predictor in shared else [run["group"]])
                for group in dict.fromkeys(groups):
                    cells.setdefault(group, {}).setdefault(condition, {}).setdefault(predictor, []).append(cell)
    return {group: {condition: {p: _stats(c) for p, c in _ordered(predictors).items()}
                    for condition, predictors in conditions.items()} for group, conditions in cells.items()}


def _ordered(predictors: dict) -> dict:
    return {p: predictors[p] for p in sorted(predictors, key=lambda p: PREDICTORS.index(p))}


def _stats(cells: list[dict]) -> dict:
    out = {"n_seeds": len(cells), "episodes": int(min(c["episodes"] for c in cells))}
    for key in STATS:
        values = np.array([c[key] for c in cells], dtype=float)
        out[f"{key}_mean"] = float(values.mean())
        out[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    out["peak_force_n_max"] = float(max(c["peak_force_n_max"] for c in cells))
    out["stopped_episodes"] = int(sum(c["stopped_episodes"] for c in cells))
    return out


def targets(summary: dict, reference: str = "demonstrator") -> dict:
    """Per group and condition: `success_met` (policy >= 0.9 success; None where the reference does not reach 0.9:
    not judged) and `ablation_ratio` / `ablation_met` (sensor removed >= 2x the policy's depth error); per group the
    counts of cells met."""
    out = {}
    for group, conditions in summary.items():
        rows = {}
        for condition, p in conditions.items():
            row = {}
            if "policy" in p and reference in p:
                judged = p[reference]["success_rate_mean"] >= SUCCESS_TARGET
                row["success_met"] = bool(p["policy"]["success_rate_mean"] >= SUCCESS_TARGET) if judged else None
            if "policy" in p and "policy_no_sensor" in p:
                ratio = p["policy_no_sensor"]["depth_error_mm_mean"] / max(p["policy"]["depth_error_mm_mean"], 1e-9)
                row["ablation_ratio"], row["ablation_met"] = float(ratio), bool(ratio >= ABLATION_TARGET)
            rows[condition] = row
        count = {key: [r[key] for r in rows.values() if r.get(key) is not None] for key in ("success_met",
                                                                                             "ablation_met")}
        out[group] = {"cells": rows, **{f"{k}_cells": f"{sum(v)}/{len(v)}" for k, v in count.items()}}
    return out


def _grid(summary: dict, metric: str):
    """Rows (conditions), columns (predictor x group; a weightless predictor once) and the mean and std arrays."""
    groups = list(summary)
    rows = list(dict.fromkeys(c for g in groups for c in summary[g]))
    present = {p for g in groups for c in summary[g].values() for p in c}
    columns = []
    for p in [p for p in PREDICTORS if p in present]:
        for g in groups[:1] if p in WEIGHTLESS or len(groups) == 1 else groups:
            columns.append((p, g))
    mean = np.full((len(rows), len(columns)), np.nan)
    std = np.full_like(mean, np.nan)
    for i, condition in enumerate(rows):
        for j, (p, g) in enumerate(columns):
            stats = summary[g].get(condition, {}).get(p)
            if stats is not None:
                mean[i, j], std[i, j] = stats[f"{metric}_mean"], stats[f"{metric}_std"]
    labels = [p if p in WEIGHTLESS or len(groups) == 1 else f"{p}\n{g}" for p, g in columns]
    return rows, labels, mean, std


def table(summary: dict, metric: str = "success_rate"):
    """'mean ± std' per condition (rows) and predictor x group (columns)."""
    import pandas as pd

    rows, labels, mean, std = _grid(summary, metric)
    text = [[f"{m:.2f} ± {s:.2f}" if np.isfinite(m) else "n/a" for m, s in zip(mr, sr)] for mr, sr in zip(mean, std)]
    return pd.DataFrame(text, index=rows, columns=[label.replace("\n", " ") for label in labels])


def plot_heatmap(summary: dict, metric: str = "success_rate"):
    """Conditions (rows) x predictor and group (columns), colour = the mean over seeds, each cell annotated
    'mean ± std': which conditions the policy survives, with and without what the groups vary (augmentation)."""
    import matplotlib.pyplot as plt

    rows, labels, mean, std = _grid(summary, metric)
    success = metric == "success_rate"
    fig, ax = plt.subplots(figsize=(2.0 + 1.5 * len(labels), 1.2 + 0.42 * len(rows)))
    image = ax.imshow(np.ma.masked_invalid(mean), cmap="RdYlGn" if success else "RdYlGn_r", aspect="auto",
                      vmin=0.0, vmax=1.0 if success else None)
    for i in range(len(rows)):
        for j in range(len(labels)):
            text = f"{mean[i, j]:.2f}\n± {std[i, j]:.2f}" if np.isfinite(mean[i, j]) else "n/a"
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    seeds = sorted({s["n_seeds"] for g in summary.values() for c in g.values() for p, s in c.items()
                    if p not in WEIGHTLESS})
    ax.set_title(f"closed loop, {metric.replace('_', ' ')}: mean ± std over training seeds (n = "
                 f"{'/'.join(map(str, seeds))}; a predictor without weights: one run)", fontsize=9)
    fig.colorbar(image, ax=ax, label=metric.replace("_", " "))
    fig.tight_layout()
    return fig


def target_lines(goals: dict) -> list[str]:
    """One line per group: how many cells meet each target (targets' counts)."""
    return [f"{group}: policy success >= {SUCCESS_TARGET} where the demonstrator reaches it: {g['success_met_cells']}"
            f" cells; sensor removed >= {ABLATION_TARGET:g}x the depth error: {g['ablation_met_cells']} cells"
            for group, g in goals.items()]
