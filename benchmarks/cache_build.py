"""End-to-end cache build: JPEGs on disk -> features in the store, preprocessing included (issue 8).

    python benchmarks/cache_build.py --random-weights --sessions 6 --workers 12 --batch-size 16

Builds the same cache twice into fresh stores, stock and fast vision path, and prints ms per encoded input. JPEG
decoding, resizing and the image processor run in DataLoader workers, overlapping the GPU.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from vla_lib.config import RunConfig
from vla_lib.data.synthetic import generate_dataset
from vla_lib.vlm.cache_build import build_cache


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--sessions", type=int, default=6)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--modes", nargs="*", default=["off", "auto"], help="backbone.fast_vision values to compare")
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="cache_bench_"))
    base = {"run_name": "cache_bench", "output_root": str(out),
            "synthetic": {"out_dir": str(out / "sessions"), "num_sensor_sessions": args.sessions,
                          "num_nosensor_sessions": 0, "duration_s": args.duration, "image_width": 640,
                          "image_height": 360},
            "data": {"root": str(out / "sessions")},
            "backbone": {"random_weights": args.random_weights, "tiny_model_dir": str(out / "tiny")},
            "cache": {"batch_size": args.batch_size, "num_workers": args.workers, "shard_size": 512}}
    generate_dataset(RunConfig.from_dict(base).synthetic)
    for mode in args.modes:
        cfg = RunConfig.from_dict(base)
        cfg.backbone.fast_vision = mode
        cfg.cache.dir = str(out / f"cache_{mode}")
        s = build_cache(cfg, log=print)
        print(f"RESULT fast_vision={mode}: {s['encoded']} inputs in {s['seconds']:.1f} s = "
              f"{s['seconds'] / max(s['encoded'], 1) * 1e3:.1f} ms/sample end to end", flush=True)


if __name__ == "__main__":
    main()
