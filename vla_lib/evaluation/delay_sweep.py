"""Closed loop against an injected inference delay, per execution mode: how late may a chunk arrive before the
needle misses its depth or pushes past the force limit? (Notebook 07.)

For each execution mode (`runtime.execution`) and each delay (`runtime.inject_delay_s`: a chunk computed at tick t
is usable from t + delay), every predictor runs the same held-out episodes through the runtime, the guard on (and,
with `closed_loop.guard_off_too`, again without it). One row per (mode, delay, predictor).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from vla_lib.evaluation.closed_loop import evaluate_closed_loop
from vla_lib.runtime.execution import EXECUTION_MODES

COLUMNS = ("success_rate", "depth_error_mm", "peak_force_n", "peak_force_n_max", "peak_force_n_guard_off",
           "peak_force_n_max_guard_off", "stopped_episodes", "switch_jump_mm_s", "inference_delay_steps")


def delay_sweep(cfg, policy, delays_s=(0.0, 0.1, 0.2, 0.3), modes=None,
                predictors=("policy", "demonstrator"), episodes: int | None = None, log=print):
    """A DataFrame: mode, delay_ms, predictor, the closed-loop summary's main figures, interventions per kind.
    `modes` None: every execution mode there is (`runtime/execution.py`)."""
    import pandas as pd

    rows = []
    for mode in EXECUTION_MODES if modes is None else modes:
        for delay in delays_s:
            run = replace(cfg, runtime=replace(cfg.runtime, execution=mode, inject_delay_s=float(delay)))
            run.validate()
            result = evaluate_closed_loop(run, policy, predictors=list(predictors), episodes=episodes,
                                          log=lambda line, m=mode, d=delay: log(f"[{m}, {d * 1e3:.0f} ms] {line}"))
            for name, m in result.metrics.items():
                rows.append({"mode": mode, "delay_ms": round(delay * 1e3), "predictor": name,
                             **{k: m[k] for k in COLUMNS}, **{f"n_{k}": v for k, v in m["interventions"].items()}})
    return pd.DataFrame(rows)


def plot_delay_sweep(table, task):
    """Success rate and peak contact force against the injected delay: one line per mode, policy solid beside the
    demonstrator dashed; the force limit and the target success rate drawn in."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
    for i, mode in enumerate(table["mode"].unique()):
        for name, style in (("policy", "o-"), ("demonstrator", "s--")):
            part = table[(table["mode"] == mode) & (table["predictor"] == name)]
            if part.empty:
                continue
            a.plot(part["delay_ms"], part["success_rate"], style, color=f"C{i}", label=f"{name}, {mode}")
            b.plot(part["delay_ms"], part["peak_force_n_max"], style, color=f"C{i}", label=f"{name}, {mode}")
            if part["peak_force_n_max_guard_off"].notna().any():
                b.plot(part["delay_ms"], part["peak_force_n_max_guard_off"], ":", color=f"C{i}", alpha=0.6,
                       label=f"{name}, {mode}, guard off")
    a.axhline(0.9, color="g", ls=":", label="target 0.9")
    a.set(xlabel="injected inference delay (ms)", ylabel="success rate", ylim=(-0.05, 1.05),
          title="closed loop: success against inference delay")
    b.axhline(task.force_limit_n, color="r", ls="--", label="force limit")
    b.set(xlabel="injected inference delay (ms)", ylabel="peak contact force (N, max over episodes)",
          title="peak force, guard on (dotted: guard off)")
    a.legend(fontsize=7)
    b.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_interventions(table):
    """The runtime's interventions per kind (summed over episodes), per mode and delay, for the policy."""
    import matplotlib.pyplot as plt

    part = table[table["predictor"] == "policy"]
    kinds = [c for c in part.columns if c.startswith("n_") and part[c].fillna(0).sum() > 0]
    fig, ax = plt.subplots(figsize=(12, 3.5))
    labels = [f"{r['mode']}\n{r['delay_ms']} ms" for _, r in part.iterrows()]
    x = np.arange(len(part))
    bottom = np.zeros(len(part))
    for k in kinds:
        v = part[k].fillna(0).to_numpy(float)
        ax.bar(x, v, bottom=bottom, label=k[2:])
        bottom += v
    ax.set_xticks(x, labels, fontsize=7)
    ax.set(ylabel="ticks (all episodes)", title="policy: the runtime's interventions per kind")
    if kinds:
        ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    return fig
