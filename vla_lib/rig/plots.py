"""Figures of a live (or replayed) run, from `outputs/<run>/live/report.json` and `ticks.jsonl`."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np


def live_dashboard(report: dict, ticks: list[dict]):
    """Action latency, staleness per stream, packets per stream, commanded vs executed path."""
    t = np.array([x["t"] for x in ticks])
    t = t - t[0] if len(t) else t
    fig, axes = plt.subplots(2, 2, figsize=(14, 8))
    a, b, c, d = axes.flat
    lat = np.array([x["latency_ms"] for x in ticks])
    missed = np.array([x["missed"] for x in ticks], bool)
    a.plot(t, lat, "o-", ms=2, lw=0.8, label="action step")
    a.plot(t[missed], lat[missed], "rx", label=f"deadline missed ({int(missed.sum())})")
    a.axhline(report["action_period_ms"], color="r", ls="--", lw=1, label="deadline")
    a.set(xlabel="s", ylabel="ms", yscale="log",
          title=f"action latency (p50 {report['action_latency_ms_p50']:.1f}, p99 {report['action_latency_ms_p99']:.1f} ms;"
                f" {report['action_hz']:.2f} Hz)")
    a.legend(fontsize=7)
    streams = list(ticks[0]["ages"]) if ticks else []
    for k in streams:
        v = np.array([np.nan if x["ages"][k] is None else x["ages"][k] for x in ticks])
        b.plot(t, np.maximum(v, 1e-4), lw=1, label=k)
    b.set(xlabel="s", ylabel="s since the newest sample", yscale="log", title="staleness per stream at each tick")
    b.legend(fontsize=7, ncol=2)
    names = ["robot", "camera", "sensor"]
    x = np.arange(3)
    accepted = [report["streams"][n]["accepted"] for n in names]
    dropped = [report["streams"][n]["dropped"] for n in names]
    lost = [(report.get("lost") or {}).get(n, 0) for n in names]
    c.bar(x - 0.25, accepted, 0.25, label="accepted")
    c.bar(x, np.maximum(dropped, 0), 0.25, label="dropped (malformed)")
    c.bar(x + 0.25, np.maximum(lost, 0), 0.25, label="lost (sent, never received)")
    for i in range(3):
        c.text(x[i], max(accepted[i], 1), f"{dropped[i]} / {lost[i]}", ha="center", va="bottom", fontsize=8)
    c.set_xticks(x, names)
    c.set(yscale="symlog", ylabel="samples / frames", title="packets per stream (dropped / lost above the bars)")
    c.legend(fontsize=7)
    pose = np.array([np.full(6, np.nan) if x["pose"] is None else x["pose"] for x in ticks], float)
    target = np.array([np.full(6, np.nan) if x["target"] is None else x["target"] for x in ticks], float)
    for i, (name, col) in enumerate(zip("xyz", ("C0", "C1", "C2"))):
        d.plot(t, pose[:, i] - np.nanmean(pose[:, i]), color=col, lw=2, label=f"{name} executed (measured)")
        d.plot(t + report["action_period_ms"] / 1e3, target[:, i] - np.nanmean(pose[:, i]), color=col, lw=1,
               ls="--", label=f"{name} commanded (target)")
    held = np.array([bool(x["reasons"]) for x in ticks])
    if held.any():
        d.plot(t[held], np.zeros(held.sum()), "k|", ms=8, label="limited / held")
    d.set(xlabel="s", ylabel="mm (minus the run's mean)",
          title="commanded target vs executed path" + (" (dry run: the robot does not follow)"
                                                         if not report["send_actions"] else ""))
    d.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig
