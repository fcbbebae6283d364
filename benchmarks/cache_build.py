"""End-to-end cache build: JPEGs on disk -> features in the store, preprocessing included (issue 8).

    python benchmarks/cache_build.py --random-weights --sessions 16 --duration 30 --workers 14 --modes auto off

Builds the same cache into fresh stores, once per `backbone.fast_vision` mode (fast encoder, stock), and prints ms per
encoded input: overall, after the first batch (which compiles and captures), and without the encoder's one-off
compile/capture time. JPEG decoding, resizing and the image processor run in DataLoader workers, overlapping the GPU.
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
        per_sample = lambda seconds: seconds / max(s["encoded"], 1) * 1e3  # noqa: E731
        print(f"RESULT fast_vision={mode}: {s['encoded']} inputs in {s['seconds']:.1f} s = "
              f"{per_sample(s['seconds']):.1f} ms/sample end to end; first batch (compile, graph capture) "
              f"{s['first_batch_s']:.1f} s, after it {1e3 / max(s['steady_samples_per_s_per_process'], 1e-9):.1f} "
              f"ms/sample ({s['loader_wait_s']:.1f} s waiting on the loader, {s['encode_call_s']:.1f} s inside encode "
              f"calls); without the encoder's one-off compile and capture time ({s['encoder_warmup_s']:.1f} s): "
              f"{per_sample(s['seconds'] - s['encoder_warmup_s']):.1f} ms/sample", flush=True)


if __name__ == "__main__":
    main()
