"""Latency profiling: the VL update over views x resolutions and the action step.

Every figure: warm-up runs first, the device synchronised around each timed call, median and p95 of the repeats.
The VL update is split into the preparation (resize to the budget, chat template, image processor: on the CPU, or on
the device with `backbone.image_prep` = gpu) and the backbone forward + pooling. Runs with the tiny VLM on CPU; with `backbone.random_weights` the published 3B
architecture is timed on a GPU without downloading weights.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from vla_lib.models.inputs import example_inputs


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _stats(ms: list[float]) -> tuple[float, float]:
    return float(np.median(ms)), float(np.percentile(ms, 95))


def timed_ms(fn, device, repeats: int, warmup: int) -> tuple[float, float]:
    """(median, p95) milliseconds of `fn()` after `warmup` untimed calls, the device synchronised around each."""
    ms = []
    for k in range(warmup + repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        if k >= warmup:
            ms.append((time.perf_counter() - t0) * 1e3)
    return _stats(ms)


def random_frames(n_views: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    """Camera-sized uint8 frames (the compute does not depend on their content)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (height, width, 3), dtype=np.uint8) for _ in range(n_views)]


def time_vl_update(backbone, n_views: int, width: int, height: int, repeats: int, warmup: int, pooling: str,
                   instruction: str = "Perform the insertion task", total_views: int = 5, batch: int = 1) -> dict:
    """One VL update of `n_views` camera frames of width x height, fitted to a width*height pixel budget."""
    backbone.set_pixel_budget(width * height)
    frames = random_frames(n_views, width, height)
    mask = [k < n_views for k in range(max(total_views, n_views))]
    prep, model = [], []
    for k in range(warmup + repeats):
        t0 = time.perf_counter()
        inputs = backbone.prepare([(frames, instruction, mask)] * batch)  # CPU, or the device (then synced)
        _sync(backbone.device)
        t1 = t2 = time.perf_counter()
        backbone.encode(inputs, pooling)
        _sync(backbone.device)
        t3 = time.perf_counter()
        if k >= warmup:
            prep.append((t1 - t0) * 1e3 / batch), model.append((t3 - t2) * 1e3 / batch)
    p50, p95 = _stats(model)
    return {"views": n_views, "width": width, "height": height, "batch": batch,
            "tokens_per_view": backbone.tokens_per_view(inputs), "prep_ms_p50": _stats(prep)[0], "vl_ms_p50": p50,
            "vl_ms_p95": p95, "total_ms_p50": _stats(prep)[0] + p50}


def latency_sweep(backbone, views: list[int], resolutions: list[list[int]], repeats: int, warmup: int,
                  pooling: str = "per_view", log=print):
    import pandas as pd

    budget = backbone.pixel_budget
    rows = []
    try:
        for w, h in resolutions:
            for v in views:
                rows.append(time_vl_update(backbone, v, w, h, repeats, warmup, pooling))
                log(f"  {v} view(s) {w}x{h}: {rows[-1]['vl_ms_p50']:.1f} ms (+{rows[-1]['prep_ms_p50']:.1f} ms prep)")
    finally:
        backbone.set_pixel_budget(budget)
    return pd.DataFrame(rows)


@torch.no_grad()
def time_action_step(heads, device, repeats: int = 50, warmup: int = 5, n_tokens: int = 6) -> dict:
    """The heads at batch 1 (SensorEncoder + Action Expert on one cached feature and one sensor window)."""
    heads = heads.to(device).eval()
    x = example_inputs(heads.config, n_tokens, device, random=True)
    p50, p95 = timed_ms(lambda: heads.predict(x), device, repeats, warmup)
    return {"action_step_ms_p50": p50, "action_step_ms_p95": p95, "device": str(device)}
