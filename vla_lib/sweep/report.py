"""Collects the done members' loss curves and metrics, and draws, judges and displays them for notebook 05."""
from __future__ import annotations

import json
from pathlib import Path

from vla_lib.config import RunConfig
from vla_lib.dotted import get_dotted
from vla_lib.notebook import repo_root
from vla_lib.sweep.grid import TRAINING_ONLY, axis_label, base_values, expand, member_dir
from vla_lib.sweep.run import DONE


def collect(source: RunConfig | str | Path) -> dict:
    """Loss curves (one DataFrame, a `member` column), a per-member metrics table, its mean ± std over the members
    that differ only in `train.seed`, and each member's robustness matrix where it ran one."""
    import pandas as pd

    root = repo_root()
    base = base_values(source, root)
    cfg = RunConfig.from_dict(base)
    curves, rows, matrices = [], [], {}
    grid = list(cfg.sweep.grid)
    for member, values in expand(base):
        out = root / member_dir(cfg, member)
        if not (out / DONE).exists():
            continue
        log = [json.loads(line) for line in open(out / "train" / "metrics.jsonl")]
        epochs = pd.DataFrame([r for r in log if "train/loss_epoch" in r]).assign(member=member)
        curves.append(epochs)
        metrics = json.loads((out / "metrics.json").read_text())
        if "robustness" in metrics:
            matrices[member] = metrics["robustness"]
        row = {"member": member}
        for k in grid:
            row[k] = get_dotted(values, k)
        row["best_val"] = json.loads((out / DONE).read_text())["best_val"]
        off = metrics["offline"]
        row["offline_mse"] = off["predictors"]["policy"]["mse"]
        row["offline_mse_no_sensor"] = off["predictors"]["policy_no_sensor"]["mse"]
        for pred, m in metrics.get("closed_loop", {}).items():
            row[f"{pred}/success_rate"] = m["success_rate"]
            row[f"{pred}/depth_error_mm"] = m["depth_error_mm"]
            row[f"{pred}/peak_force_n"] = m["peak_force_n"]
            row[f"{pred}/episodes"] = m["episodes"]
        rows.append(row)
    table = pd.DataFrame(rows)
    group_keys = [k for k in grid if k != "train.seed"]
    numeric = [c for c in table.columns if c not in ("member", *grid) and table[c].dtype != object]
    if len(table):
        grouped = table.groupby(group_keys) if group_keys else table.assign(_all="all").groupby("_all")
        agg = grouped[numeric].agg(["mean", "std", "count"])
    else:
        agg = pd.DataFrame()
    return {"curves": pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(), "table": table,
            "mean_std": agg, "grid": grid, "robustness": matrices}


def mean_std_table(collected: dict, columns: list[str]):
    """'mean ± std (n)' strings for the chosen metrics, one row per grid group."""
    import pandas as pd

    agg = collected["mean_std"]
    if agg.empty:
        return pd.DataFrame()
    out = pd.DataFrame(index=agg.index)
    for c in columns:
        if (c, "mean") in agg.columns:
            out[c] = [f"{m:.3f} ± {s:.3f} (n={int(n)})" for m, s, n in
                      zip(agg[(c, "mean")], agg[(c, "std")].fillna(0.0), agg[(c, "count")])]
    return out


# ---------------------------------------------------------------------------------------------------------------
# Notebook 05: figures and the verdict
# ---------------------------------------------------------------------------------------------------------------
def show(fig, out_dir, name: str):
    """Save the figure and display the PNG (embeds in the executed notebook whatever the matplotlib backend)."""
    import matplotlib.pyplot as plt
    from IPython.display import Image, display

    from vla_lib.notebook import save_fig

    path = save_fig(fig, out_dir, name)
    plt.close(fig)
    display(Image(filename=str(path)))
    return path


def group_label(row, grid: list[str]) -> str:
    keys = [k for k in grid if k != "train.seed"]
    return ", ".join(axis_label(k, row[k]) for k in keys) or "all"


def plot_loss_curves(collected: dict):
    """Train and validation loss per epoch, every member overlaid: one colour per member (its seed), one line style
    per grid group, a legend on both panels."""
    import matplotlib.pyplot as plt

    curves, table, grid = collected["curves"], collected["table"], collected["grid"]
    groups = {m: group_label(r, grid) for m, r in table.set_index("member").iterrows()}
    styles = {g: ("-", "--", ":", "-.")[i % 4] for i, g in enumerate(sorted(set(groups.values())))}
    fig, axes = plt.subplots(1, 2, figsize=(13, 4), sharey=True)
    for i, (member, part) in enumerate(curves.groupby("member")):
        style = dict(color=f"C{i}", linestyle=styles[groups[member]], marker="o", markersize=3, label=member)
        axes[0].plot(part["epoch"], part["train/loss_epoch"], **style)
        axes[1].plot(part["epoch"], part["val/loss_epoch"], **style)
    axes[0].set(title="train loss per epoch", xlabel="epoch", ylabel="weighted MSE (normalised)", yscale="log")
    axes[1].set(title="validation loss per epoch", xlabel="epoch", yscale="log")
    for ax in axes:
        ax.legend(fontsize=8, title="member")
    fig.tight_layout()
    return fig


def plot_closed_loop_summary(collected: dict, predictors=("policy", "policy_no_sensor", "scripted")):
    """Closed-loop success rate and depth error, mean ± std over seeds, per grid group and predictor."""
    import matplotlib.pyplot as plt
    import numpy as np

    table, grid = collected["table"], collected["grid"]
    table = table.assign(group=[group_label(r, grid) for _, r in table.iterrows()])
    groups = sorted(table.group.unique())
    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    width = 0.8 / len(predictors)
    for k, pred in enumerate(predictors):
        for ax, metric in zip(axes, ("success_rate", "depth_error_mm")):
            col = f"{pred}/{metric}"
            if col not in table:
                continue
            stats = table.groupby("group")[col].agg(["mean", "std"]).reindex(groups)
            ax.bar(np.arange(len(groups)) + k * width, stats["mean"], width, yerr=stats["std"].fillna(0),
                   capsize=3, label=pred)
    for ax, title in zip(axes, ("closed-loop success rate", "final depth error (mm)")):
        ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups)
        ax.set(title=f"{title}, mean ± std over seeds")
        ax.legend(fontsize=8)
    axes[1].set_yscale("log")
    fig.tight_layout()
    return fig


def verdict(collected: dict, cfg: RunConfig) -> dict:
    """The sweep's pass criteria, checked on the sensor-on members (policy trained with the sensor): success >= 0.9
    and the depth error with the sensor removed >= 2x the error with it, as mean ± std over the sweep's seeds."""
    import numpy as np

    table = collected["table"]
    on = table[table["data.sensor_enabled"].astype(bool)] if "data.sensor_enabled" in table else table
    if not len(on) or "policy/success_rate" not in on:
        return {"members": 0}
    success = on["policy/success_rate"].to_numpy(float)
    err, err_off = on["policy/depth_error_mm"].to_numpy(float), on["policy_no_sensor/depth_error_mm"].to_numpy(float)
    ratio = err_off / np.maximum(err, 1e-9)
    # other grid axes (e.g. augment on/off) are groups, not more seeds: the line names them
    groups = sorted({group_label(row, [k for k in collected["grid"] if k != "data.sensor_enabled"])
                     for _, row in on.iterrows()})
    out = {"members": int(len(on)), "seeds": sorted({int(s) for s in on.get("train.seed", [])}), "groups": groups,
           "episodes": int(on["policy/episodes"].min()),
           "success_rate_mean": float(success.mean()), "success_rate_std": float(success.std(ddof=1)) if len(on) > 1 else 0.0,
           "depth_error_mm_mean": float(err.mean()), "depth_error_mm_std": float(err.std(ddof=1)) if len(on) > 1 else 0.0,
           "no_sensor_depth_error_mm_mean": float(err_off.mean()),
           "no_sensor_depth_error_mm_std": float(err_off.std(ddof=1)) if len(on) > 1 else 0.0,
           "ablation_error_ratio_mean": float(ratio.mean()), "ablation_error_ratio_min": float(ratio.min())}
    if "scripted/success_rate" in table:  # run by the first member of its evaluation group only (config.WEIGHTLESS)
        out["scripted_success_rate"] = float(table["scripted/success_rate"].mean())
        out["scripted_depth_error_mm"] = float(table["scripted/depth_error_mm"].mean())
    off = table[~table["data.sensor_enabled"].astype(bool)] if "data.sensor_enabled" in table else table.iloc[:0]
    if len(off):
        out["trained_without_sensor_success_rate_mean"] = float(off["policy/success_rate"].mean())
        out["trained_without_sensor_depth_error_mm_mean"] = float(off["policy/depth_error_mm"].mean())
    out["target_success_met"] = bool(out["success_rate_mean"] >= 0.9)
    out["target_ablation_met"] = bool(out["ablation_error_ratio_mean"] >= 2.0)
    out["target_seeds_met"] = bool(out["members"] >= 3 and out["episodes"] >= 20)
    return out


def closed_loop_summary(collected: dict) -> dict:
    """Per predictor over every done member: mean ± std over members of success rate, depth error, peak force, and
    the episodes counted (for outputs/<run>/metrics.json["closed_loop"] of the run that owns the sweep)."""
    table = collected["table"]
    out = {}
    for col in [c for c in table.columns if c.endswith("/success_rate")]:
        pred = col.split("/")[0]
        out[pred] = {"members": int(len(table)), "episodes": int(table[f"{pred}/episodes"].sum())}
        for metric in ("success_rate", "depth_error_mm", "peak_force_n"):
            values = table[f"{pred}/{metric}"].astype(float)
            out[pred][metric] = float(values.mean())
            out[pred][f"{metric}_std_over_members"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out


def robustness_summary(collected: dict) -> dict:
    """The members' robustness matrices as mean ± std over each grid group's seeds, {group: {condition: {predictor:
    stats}}} (evaluation/robustness.py), for metrics.json["robustness"] of the run that owns the sweep; {} when no
    member ran one. A weightless predictor ran in the first member of its evaluation settings (grid.py) only."""
    from vla_lib.evaluation.robustness import aggregate

    table, grid = collected["table"], collected["grid"]
    evaluation = [k for k in grid if not k.startswith(TRAINING_ONLY)]
    runs = [{"group": group_label(row, grid), "shared_key": tuple(repr(row[k]) for k in evaluation),
             "matrix": collected["robustness"][row["member"]]}
            for _, row in table.iterrows() if row["member"] in collected["robustness"]]
    return aggregate(runs)
