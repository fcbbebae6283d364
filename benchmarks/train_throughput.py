"""Stage-1 training throughput from the cache, data loading included (issue 6): samples/s per epoch.

    python benchmarks/train_throughput.py --sessions 24 --duration 45 --batch-size 64 --workers 8 --compile

Writes synthetic sessions, fills a feature store with random 2048-d features (the 3B backbone's width, under the
random-weights fingerprint: the heads' cost does not depend on feature values), then trains the `original`-shape
heads through `vla_lib.train.train` and prints samples/s of each epoch (the first includes warm-up).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from vla_lib.config import RunConfig
from vla_lib.data.samples import build_index
from vla_lib.sim.demonstrations import write_dataset
from vla_lib.train import train
from vla_lib.vlm.cache_build import open_store


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--preset", default="original")
    ap.add_argument("--compile", action="store_true", help="train.compile (torch.compile the heads in place)")
    ap.add_argument("--compile-mode", default="reduce-overhead", help="train.compile_mode")
    ap.add_argument("--log-every", type=int, default=50, help="train.log_every_steps (each log is a host sync)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="train_bench_"))
    cfg = RunConfig.from_dict({
        "run_name": "train_bench", "output_root": str(out),
        "synthetic": {"out_dir": str(out / "sessions"), "num_sensor_sessions": args.sessions * 2 // 3,
                      "num_nosensor_sessions": args.sessions - args.sessions * 2 // 3, "duration_s": args.duration,
                      "image_width": 160, "image_height": 90},
        "data": {"root": str(out / "sessions"), "check_images": False}, "backbone": {"random_weights": True, "tiny_model_dir": str(out / "tiny")},
        "cache": {"dir": str(out / "cache")}, "model": {"preset": args.preset},
        "train": {"output_dir": str(out / "train"), "epochs": args.epochs, "batch_size": args.batch_size,
                  "grad_accum_steps": 1, "num_workers": args.workers, "wandb_mode": "disabled",
                  "log_every_steps": args.log_every, "compile": args.compile, "compile_mode": args.compile_mode},
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
    print(f"{len(index)} samples, {len(keys)} distinct VL inputs, prepared in {time.time() - t:.0f} s")
    summary = train(cfg, log=print)
    rates = [row["train/samples_per_s"] for row in summary["history"]]
    loader_rate, model_rate = breakdown(cfg, index, store, args)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(json.dumps({"device": device, "batch_size": args.batch_size, "workers": args.workers,
                      "compile": args.compile and args.compile_mode,
                      "train_loss_per_epoch": [round(row["train/loss_epoch"], 4) for row in summary["history"]],
                      "preset": args.preset, "samples_per_s_per_epoch": [round(r) for r in rates],
                      "best_after_warmup": round(max(rates[1:] or rates)),
                      "loader_only_samples_per_s": round(loader_rate), "model_only_samples_per_s": round(model_rate)}))


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
    if args.compile:
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
    return loader_rate, steps * args.batch_size / (time.perf_counter() - t0)


if __name__ == "__main__":
    main()
