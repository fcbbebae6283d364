"""How much the loop's stale features cost: the replay's ticks re-run with features fresh at each tick.

The replay (`runtime.replay_io.ReplayIO` through `runtime.loop.run_loop`) measures timing: action-step latency
p50/p95/p99, deadline misses, VL refresh rate, feature staleness. This measures accuracy: the chunk error with the
features the loop really had (stale) against features encoded from the frames current at each tick (fresh).
"""
from __future__ import annotations

import numpy as np

from vla_lib.dims import POSE_DIMS


def fresh_vs_stale(policy, replay, instruction: str, report) -> dict:
    """Chunk MSE (6 pose dims) of what the loop sent (features as they were) against the same ticks re-run with
    features encoded from the frames current at each tick (fresh), both against the recorded truth."""
    fresh_cache: dict[tuple, tuple] = {}
    err_stale, err_fresh = [], []
    for tick in report.ticks:
        images, ident, _ = replay.frames_at(tick["t"])
        if ident not in fresh_cache:
            fresh_cache[ident] = policy.encode([instruction], [images])
        feats, mask = fresh_cache[ident]
        w, h = tick["window"], tick["history"]
        fresh = policy.act(feats, mask, None if w is None else w.batched(), None if h is None else h[None],
                           tick["contact"][None])[0]
        truth = replay.true_chunk(tick["t"])
        err_stale.append(((tick["chunk"][:, :POSE_DIMS] - truth) ** 2).mean())
        err_fresh.append(((fresh[:, :POSE_DIMS] - truth) ** 2).mean())
    return {"mse_loop_features": float(np.mean(err_stale)), "mse_fresh_features": float(np.mean(err_fresh)),
            "ticks_with_stale_features": int(sum(t["ident"] != replay.frames_at(t["t"])[1] for t in report.ticks))}
