"""VL encode: stock transformers against the fast encoder, side by side in one process.

    python benchmarks/vl_encode.py --random-weights            # the published 3B architecture, no download (GPU)
    python benchmarks/vl_encode.py --stock-only --batches 1 8   # the stock figures alone

Prints ms/sample (backbone forward + pooling; inputs prepared beforehand) for stock and for the fast encoder at each
of its levels (packed attention with the layout precomputed; + compiled blocks; + a CUDA graph per layout), the
speed-up of the fastest, peak GPU memory and the fraction of the arithmetic floor (2 x parameters x tokens at the
measured ~790 bf16 TFLOP/s). First checks that each level's bf16 pooled features are no further from an fp32 stock
reference than 1.5x the stock bf16 path's own distance.
"""
from __future__ import annotations

import argparse

import torch

from vla_lib.config import BackboneConfig
from vla_lib.evaluation.latency import random_frames, timed_ms
from vla_lib.vlm.qwen.backbone import load_backbone, set_pixel_budget
from vla_lib.vlm.qwen.encode import encode, prepare_inputs
from vla_lib.vlm.qwen.fast_vision import disable_fast_vision, enable_fast_vision

PEAK_TFLOPS = 790.0  # bf16 dense matrix product measured on the H100 / H200 here
LEVELS = {"packed": {}, "compiled": {"compile": True}, "graphed": {"compile": True, "cuda_graphs": True}}


def inputs_for(bb, n_views, width, height, batch, seed=0):
    frames = random_frames(n_views, width, height, seed)
    return prepare_inputs(bb.processor, [(frames, "Perform the insertion task", [True] * n_views)] * batch,
                          bb.pixel_budget, bb.dtype)


def time_encode(bb, inputs, repeats, warmup):
    return timed_ms(lambda: encode(bb, inputs, "per_view"), bb.device, repeats, warmup)[0]


def floor_ms(bb, inputs) -> float:
    inner = bb.model.model
    p_vis = sum(p.numel() for p in inner.visual.parameters())
    p_lm = sum(p.numel() for p in inner.language_model.parameters()) - inner.language_model.embed_tokens.weight.numel()
    patches = int(inputs.batch["image_grid_thw"].prod(-1).sum())
    tokens = int(inputs.batch["attention_mask"].sum())
    return 2 * (p_vis * patches + p_lm * tokens) / (PEAK_TFLOPS * 1e12) * 1e3


def check(bb, args, levels):
    """fp32 stock reference, then the same weights in bf16: stock and each fast level against it."""
    set_pixel_budget(bb, 640 * 360)
    inputs = inputs_for(bb, args.views, 640, 360, 2, seed=1)
    ref = encode(bb, inputs, "per_view")[0]
    bb.model.to(torch.bfloat16)
    bb.dtype = torch.bfloat16
    rel = lambda a: float((a - ref).norm() / ref.norm())  # noqa: E731
    stock = rel(encode(bb, inputs, "per_view")[0])
    print(f"correctness vs fp32 stock (relative distance of pooled features): stock bf16 {stock:.4f}")
    for level in levels:
        enable_fast_vision(bb, args.backend, log=lambda *a: None, **LEVELS[level])
        fast = rel(encode(bb, inputs, "per_view")[0])
        disable_fast_vision(bb)
        print(f"  fast {level} bf16 {fast:.4f} (ratio {fast / stock:.2f}, must be <= 1.5)", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--views", type=int, default=5)
    ap.add_argument("--sizes", nargs="*", default=["640x360", "1280x720"])
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 8, 16])
    ap.add_argument("--big-batches", type=int, nargs="*", default=[1], help="batches for sizes above 640x360")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--stock-only", action="store_true")
    ap.add_argument("--levels", nargs="*", default=list(LEVELS), choices=list(LEVELS))
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--no-check", action="store_true")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    levels = [] if args.stock_only else args.levels if cuda else [lv for lv in args.levels if lv == "packed"]
    torch.manual_seed(0)
    cfg = BackboneConfig(name_or_path=args.model, random_weights=args.random_weights, fast_vision="off",
                         dtype="fp32" if (cuda and not args.no_check) else "auto")
    bb = load_backbone(cfg)
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'}, torch {torch.__version__}, "
          f"backbone {bb.name}, "
          f"{sum(p.numel() for p in bb.model.parameters()) / 1e9:.3f} B parameters", flush=True)
    if cuda and not args.no_check:
        check(bb, args, levels)
    rows = []
    for size in args.sizes:
        w, h = map(int, size.split("x"))
        set_pixel_budget(bb, w * h)
        for batch in (args.batches if w * h <= 640 * 360 else args.big_batches):
            inputs = inputs_for(bb, args.views, w, h, batch)
            tokens = int((inputs.batch["input_ids"][0] == bb.config.image_token_id).sum()) // args.views
            row = {"size": size, "tokens/view": tokens, "batch": batch}
            peaks = {}
            for level in ["stock", *levels]:
                if level != "stock":
                    enable_fast_vision(bb, args.backend, log=lambda *a: None, **LEVELS[level])
                if cuda:
                    torch.cuda.empty_cache(), torch.cuda.reset_peak_memory_stats()
                row[f"{level} ms"] = time_encode(bb, inputs, args.repeats, args.warmup) / batch
                peaks[level] = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
                disable_fast_vision(bb)
            best = min([lv for lv in levels], key=lambda lv: row[f"{lv} ms"], default=None)
            row["floor ms"] = floor_ms(bb, inputs) / batch
            if best:
                row.update({"best": best, "speed-up": row["stock ms"] / row[f"{best} ms"],
                            "floor/best": row["floor ms"] / row[f"{best} ms"]})
            row.update({"stock GiB": peaks["stock"], "best GiB": peaks.get(best, float("nan"))})
            rows.append(row)
            print("  " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  flush=True)
    import pandas as pd

    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda x: f"{x:.3g}"))


if __name__ == "__main__":
    main()
