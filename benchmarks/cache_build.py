"""End-to-end cache build: JPEGs on disk -> features in the store, preprocessing included.

    python benchmarks/cache_build.py --random-weights --sessions 16 --duration 30 --workers 14 --modes auto off
    python benchmarks/cache_build.py --random-weights ... --modes auto --image-preps gpu --compile-cache-dir DIR

Builds the same cache into fresh stores, once per `backbone.fast_vision` mode (fast encoder, stock) and
`backbone.image_prep` (cpu: JPEG decoding, resizing and the image processor in DataLoader workers; gpu: the workers
read the files' bytes, the device decodes and prepares), and prints ms per encoded input: overall, after the first
batch (which compiles and captures), and without the encoder's one-off compile/capture time. `--stock-sessions N`
builds the stock rows over the first N sessions only (stock is ~5x slower). Run it twice with the same
`--compile-cache-dir` to see the warm-up with torch.compile's caches cold, then warm.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from vla_lib.config import RunConfig
from vla_lib.sim.demonstrations import write_dataset
from vla_lib.vlm.cache_build import build_cache


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--sessions", type=int, default=6)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--modes", nargs="*", default=["off", "auto"], help="backbone.fast_vision values to compare")
    ap.add_argument("--image-preps", nargs="*", default=["auto"], help="backbone.image_prep values to compare")
    ap.add_argument("--runs", nargs="*", default=None,
                    help="fast_vision:image_prep[:workers] in this order (e.g. auto:gpu auto:gpu:workers off:cpu; "
                         "workers: cache.worker_decode, JPEGs decoded in the workers); overrides --modes x --image-preps")
    ap.add_argument("--stock-sessions", type=int, default=0, help="stock rows over the first N sessions (0: all)")
    ap.add_argument("--compile-cache-dir", default=None, help="backbone.compile_cache_dir (default: the config's)")
    ap.add_argument("--data-dir", default=None, help="reuse/keep the synthetic sessions here")
    args = ap.parse_args()
    import time

    import torch

    out = Path(tempfile.mkdtemp(prefix="cache_bench_"))
    sessions = Path(args.data_dir) if args.data_dir else out / "sessions"
    base = {"run_name": "cache_bench", "output_root": str(out),
            "synthetic": {"out_dir": str(sessions), "num_sensor_sessions": args.sessions,
                          "num_nosensor_sessions": 0, "duration_s": args.duration, "image_width": 640,
                          "image_height": 360},
            "data": {"root": str(sessions)},
            "backbone": {"random_weights": args.random_weights, "tiny_model_dir": str(out / "tiny")},
            "cache": {"batch_size": args.batch_size, "num_workers": args.workers, "shard_size": 512}}
    if not (sessions.exists() and any(sessions.iterdir())):
        write_dataset(RunConfig.from_dict(base).synthetic)
    t_process = time.time()
    runs = ([tuple(r.split(":")) for r in args.runs] if args.runs else
            [(m, p) for p in args.image_preps for m in args.modes])
    for mode, prep, *where in runs:
        cfg = RunConfig.from_dict(base)
        cfg.backbone.fast_vision, cfg.backbone.image_prep = mode, prep
        cfg.cache.worker_decode = where == ["workers"]
        prep += " (JPEGs decoded in the workers)" if cfg.cache.worker_decode else ""
        if args.compile_cache_dir is not None:
            cfg.backbone.compile_cache_dir = args.compile_cache_dir
        if mode == "off" and args.stock_sessions:
            cfg.data.max_sessions = args.stock_sessions
        cfg.cache.dir = str(out / f"cache_{mode}_{prep.split()[0]}{'_w' if cfg.cache.worker_decode else ''}")
        t_load = time.time()
        s = build_cache(cfg, log=print)
        import os

        print(f"TORCHINDUCTOR_CACHE_DIR={os.environ.get('TORCHINDUCTOR_CACHE_DIR')}")
        per_sample = lambda seconds: seconds / max(s["encoded"], 1) * 1e3  # noqa: E731
        if mode != "off":
            from torch._dynamo.utils import compile_times

            print(f"torch.compile time by phase (this process so far): {compile_times(repr='str')}")
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        print(f"RESULT fast_vision={mode} image_prep={prep} (device: {device}): build call {time.time() - t_load:.1f} s, process "
              f"{time.time() - t_process:.1f} s so far; {s['encoded']} inputs in {s['seconds']:.1f} s = "
              f"{per_sample(s['seconds']):.1f} ms/sample end to end; first batch (compile, graph capture) "
              f"{s['first_batch_s']:.1f} s, after it {1e3 / max(s['steady_samples_per_s_per_process'], 1e-9):.1f} "
              f"ms/sample ({s['loader_wait_s']:.1f} s waiting on the loader, {s['encode_call_s']:.1f} s inside encode "
              f"calls); without the encoder's one-off compile and capture time ({s['encoder_warmup_s']:.1f} s): "
              f"{per_sample(s['seconds'] - s['encoder_warmup_s']):.1f} ms/sample", flush=True)


if __name__ == "__main__":
    main()
