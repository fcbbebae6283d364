"""Stage 2 through the real training loop on one GPU: synthetic sessions -> Stage-1 feature cache and heads (one
epoch) -> Stage 2 (LoRA + heads) with `training.train` (Stage2Trainer: the frame-level vision cache built first, then
data loading, the LM plan on the CPU, the step, validation and checkpoints), on the published Qwen2.5-VL-3B
architecture with random weights (no download). Unlike `stage2_throughput.py` nothing is prepared beforehand.

    python benchmarks/stage2_training_run.py --out /tmp/stage2_run                  # GPU: 3B, 5 views 640x360
    python benchmarks/stage2_training_run.py --out /tmp/s2 --tiny --sessions 2      # CPU: proves the script runs

Prints, per Stage-2 setting (`--settings batch:gc ...`): training samples/s of each epoch as `metrics.jsonl` records
it (loading included; the first epoch also pays the compilation of the LM layers, the second is the steady state),
the optimiser steps, the vision cache and peak GPU memory.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vla_lib import training
from vla_lib.config import RunConfig
from vla_lib.sim.demonstrations import write_dataset
from vla_lib.vlm.cache_build import build_cache

REPO = Path(__file__).resolve().parents[1]


def stage1_config(args) -> RunConfig:
    cfg = RunConfig.from_yaml(REPO / "params/ci.yaml")
    out = Path(args.out)
    return cfg.with_overrides({
        "run_name": "stage1", "output_root": str(out), "train.output_dir": str(out / "stage1/train"),
        "synthetic.out_dir": str(out / "sessions"), "data.root": str(out / "sessions"),
        "synthetic.num_sensor_sessions": args.sessions, "synthetic.num_nosensor_sessions": 0,
        "synthetic.duration_s": args.duration, "synthetic.image_width": 640, "synthetic.image_height": 360,
        "data.val_fraction": 0.1, "backbone.random_weights": not args.tiny, "backbone.device": args.device,
        "backbone.image_resize_width": 308 if args.tiny else 640,
        "backbone.image_resize_height": 168 if args.tiny else 360,
        "cache.dir": str(out / "vl_cache"), "cache.batch_size": 8, "train.epochs": 1, "train.batch_size": 16,
        "train.wandb_mode": "disabled"})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tiny", action="store_true", help="the tiny VLM at 308x168 (CPU check)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--duration", type=float, default=12.0, help="seconds per synthetic session (10 samples/s)")
    ap.add_argument("--epochs", type=int, default=2, help="Stage-2 epochs (the first includes compilation)")
    ap.add_argument("--settings", nargs="*", default=["8:off", "16:on"],
                    help="Stage-2 runs as batch:gradient-checkpointing (on|off)[:eager] (eager: LM layers not compiled)")
    args = ap.parse_args()
    cfg = stage1_config(args)
    t0 = time.perf_counter()
    write_dataset(cfg.synthetic)
    print(f"sessions written in {time.perf_counter() - t0:.0f} s", flush=True)
    t0 = time.perf_counter()
    build_cache(cfg, log=lambda *a: None)
    training.train(cfg, log=lambda *a: None)
    print(f"Stage 1 (cache + one epoch of the heads) in {time.perf_counter() - t0:.0f} s", flush=True)
    best = Path(cfg.train.output_dir) / "checkpoints/qwen_vla_sensor_best.pt"
    for setting in args.settings:
        batch, gc, *mode = setting.split(":")  # batch:on|off[:eager]
        s2 = cfg.with_overrides({
            "run_name": setting.replace(":", "_"), "train.output_dir": str(Path(args.out) / setting.replace(":", "_")),
            "train.training_stage": "stage2", "train.finetune_vl": "lora", "train.stage1_checkpoint": str(best),
            "train.batch_size": int(batch), "train.lr": 1e-4, "train.vl_lr": 1e-5, "train.epochs": args.epochs,
            "lora.gradient_checkpointing": gc == "on", "lora.compile_layers": "off" if mode == ["eager"] else "auto"})
        if torch.cuda.is_available():
            torch.cuda.empty_cache(), torch.cuda.reset_peak_memory_stats()
        lines = []
        t0 = time.perf_counter()
        summary = training.train(s2, log=lines.append)
        total = time.perf_counter() - t0
        epochs = summary["history"]
        vision = next((ln for ln in lines if ln.startswith("Vision cache")), "")
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
        print(json.dumps({"batch": int(batch), "gradient_checkpointing": gc,
                          "layers": "eager" if mode == ["eager"] or not torch.cuda.is_available() else "compiled", "steps": summary["global_step"],
                          "train_samples_per_s_by_epoch": [round(e["train/samples_per_s"], 2) for e in epochs],
                          "val_loss_by_epoch": [round(e["val/loss_epoch"], 5) for e in epochs],
                          "peak_GiB": round(peak, 1),
                          "run_s": round(total, 1), "vision_cache": vision}), flush=True)


if __name__ == "__main__":
    main()
