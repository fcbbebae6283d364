"""Stage-1 training throughput from the cache, data loading included: samples/s per epoch, median and range over
rounds, compiled beside eager in one process.

    python benchmarks/train_throughput.py --sessions 24 --duration 45 --batch-size 64 --workers 8 --compile --rounds 3

Writes synthetic sessions, fills a feature store with random 2048-d features (the 3B backbone's width, under the
random-weights fingerprint: the heads' cost does not depend on feature values), then trains the `original`-shape
heads through `vla_lib.training.train` and prints samples/s of each epoch (the first includes warm-up). A run whose
logged loss or gradient norm is not finite prints no throughput (training itself stops on one: train.FiniteGuard).
Whether the compiled heads compute eager's function is `benchmarks/heads_equivalence.py` (a step of scripts/gpu_check.py).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vla_lib.config import RunConfig
from vla_lib.data.samples import build_index
from vla_lib.sim.demonstrations import write_dataset
from vla_lib.training import train
from vla_lib.vlm.cache_build import open_store


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3, help="per run; the first includes warm-up and is not counted")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each variant: median and range over them")
    ap.add_argument("--preset", default="original")
    ap.add_argument("--variants", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    ap.add_argument("--compile-mode", default="reduce-overhead", help="train.compile_mode of the compiled variant")
    ap.add_argument("--log-every", type=int, default=50, help="train.log_every_steps (each log is a host sync)")
    ap.add_argument("--breakdown", action="store_true", help="also time the loader alone and the step alone")
    ap.add_argument("--profile", action="store_true",
                    help="also profile one steady-state epoch of the compiled variant through the real loop")
    ap.add_argument("--trace", default=None, help="with --profile: write the Chrome trace here")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="train_bench_"))
    cfg = RunConfig.from_dict({
        "run_name": "train_bench", "output_root": str(out),
        "synthetic": {"out_dir": str(out / "sessions"), "num_sensor_sessions": args.sessions * 2 // 3,
                      "num_nosensor_sessions": args.sessions - args.sessions * 2 // 3, "duration_s": args.duration,
                      "image_width": 160, "image_height": 90},
        "data": {"root": str(out / "sessions"), "check_images": False},
        "backbone": {"random_weights": True, "tiny_model_dir": str(out / "tiny")},
        "cache": {"dir": str(out / "cache")}, "model": {"preset": args.preset},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "grad_accum_steps": 1,
                  "num_workers": args.workers, "wandb_mode": "disabled", "log_every_steps": args.log_every,
                  "compile_mode": args.compile_mode},
    })
    t = time.time()
    write_dataset(cfg.synthetic)
    index = build_index(cfg.data)
    store = open_store(cfg)
    writer = store.writer(0, 4096)
    keys = list(index.table.cache_key.unique())
    n_tokens = len(cfg.data.views) + 1
    for i in range(0, len(keys), 4096):
        part = keys[i:i + 4096]
        writer.add(part, torch.randn(len(part), n_tokens, 2048, dtype=torch.float16),
                   torch.ones(len(part), n_tokens, dtype=torch.bool))
    writer.flush()
    store.merge_index()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"{device}, torch {torch.__version__}; {len(index)} samples, {len(keys)} distinct VL inputs, prepared in "
          f"{time.time() - t:.0f} s; heads {args.preset}, batch {args.batch_size}, {args.workers} workers", flush=True)
    results = {v: [] for v in args.variants}
    for r in range(args.rounds):
        for variant in args.variants:  # alternated, so drift of the machine falls on both
            run_cfg = cfg.with_overrides({"run_name": f"train_{variant}_{r}",  # each run its own folder and params
                                          "train.output_dir": str(out / f"train_{variant}_{r}"),
                                          "train.compile": variant == "compiled"})
            summary = train(run_cfg, log=lambda *a: None)  # stops with NonFiniteError on a non-finite loss
            rows = summary["history"]
            losses = [row["train/loss_epoch"] for row in rows] + [row["val/loss_epoch"] for row in rows]
            if not all(math.isfinite(v) for v in losses):
                raise SystemExit(f"{variant} round {r + 1}: a non-finite loss ({losses}): no throughput printed")
            if len(rows) > 1 and not rows[-1]["train/loss_epoch"] < rows[0]["train/loss_epoch"]:
                raise SystemExit(f"{variant} round {r + 1}: the training loss did not decrease ({losses}): no "
                                 "throughput printed")
            rate = statistics.median(row["train/samples_per_s"] for row in rows[1:] or rows)
            results[variant].append({"rate": rate, "losses": [round(row["train/loss_epoch"], 4) for row in rows]})
            print(f"  round {r + 1} {variant}: {rate:.0f} samples/s after the first epoch, train loss per epoch "
                  f"{results[variant][-1]['losses']}", flush=True)
    report = {"device": device, "batch_size": args.batch_size, "workers": args.workers, "rounds": args.rounds,
              "compile_mode": args.compile_mode}
    for variant, runs in results.items():
        rates = [run["rate"] for run in runs]
        report[variant] = {"samples_per_s_median": round(statistics.median(rates)),
                           "range": [round(min(rates)), round(max(rates))],
                           "train_loss_per_epoch": [run["losses"] for run in runs]}
    print(json.dumps(report))
    if args.breakdown:
        loader_rate, model_rate = breakdown(cfg, index, store, args)
        print(json.dumps({"loader_only_samples_per_s": round(loader_rate),
                          "model_only_samples_per_s": round(model_rate)}))
    if args.profile:
        profile_epoch(cfg, out, args)


def profile_epoch(cfg, out: Path, args) -> None:
    """Where a steady-state epoch of the real loop spends its time: the Trainer's own steps, its second epoch
    (the first compiles) under torch.profiler; prints the ops by host time and by device time."""
    from torch.profiler import ProfilerActivity, profile

    from vla_lib.train import Trainer

    run = Trainer(cfg.with_overrides({"run_name": "train_profile", "train.output_dir": str(out / "train_profile"),
                                      "train.compile": True,
                                      "train.epochs": 2}), log=lambda *a: None)
    run.setup()
    run.resume_or_start()
    run.train_epoch()
    run.end_epoch(run.validate())
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        t = time.perf_counter()
        run.train_epoch()
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        wall = time.perf_counter() - t
    steps = run.steps_per_epoch
    print(f"profiled epoch: {steps} steps, {1e3 * wall / steps:.1f} ms/step wall under the profiler")
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=70))
    if torch.cuda.is_available():
        print(events.table(sort_by="self_device_time_total", row_limit=20, max_name_column_width=70))
    if args.trace:
        prof.export_chrome_trace(args.trace)


def breakdown(cfg, index, store, args) -> tuple[float, float]:
    """The two halves alone: the DataLoader (to the device) and the training step on one resident batch."""
    from torch.utils.data import DataLoader

    from vla_lib.data.batches import FeatureJoinedDataset, collate
    from vla_lib.models.inputs import inputs_from_batch
    from vla_lib.data.samples import SampleDataset
    from vla_lib.models.modeling_policy import Stage1Policy
    from vla_lib.vlm.feature_store import FeatureTable

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = FeatureJoinedDataset(SampleDataset(index, cfg.data), FeatureTable(store, index.table.cache_key))
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, collate_fn=collate,
                        drop_last=True, pin_memory=device.type == "cuda")
    n, t0, warm = 0, None, min(5, len(loader) // 3)
    for k, batch in enumerate(loader):
        x = inputs_from_batch(batch, device)
        target = batch["target"].to(device, non_blocking=True)
        if k == warm:
            torch.cuda.synchronize() if device.type == "cuda" else None
            t0 = time.perf_counter()
        elif k > warm:
            n += len(x.vl)
    torch.cuda.synchronize() if device.type == "cuda" else None
    loader_rate = n / (time.perf_counter() - t0)
    cfg.model.vl_dim = 2048
    model = Stage1Policy(cfg.model).to(device).train()
    if "compiled" in args.variants:
        model.compile(mode=args.compile_mode)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
    steps = 30
    for k in range(steps + 5):
        if k == 5:
            torch.cuda.synchronize() if device.type == "cuda" else None
            t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            pred = model(x)
        loss = (pred.float() - model.normalize_actions(target)).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    torch.cuda.synchronize() if device.type == "cuda" else None
    elapsed = time.perf_counter() - t0
    if not torch.isfinite(loss):
        raise SystemExit(f"the step-alone loop ended with a non-finite loss ({float(loss)}): no throughput printed")
    return loader_rate, steps * args.batch_size / elapsed


if __name__ == "__main__":
    main()
