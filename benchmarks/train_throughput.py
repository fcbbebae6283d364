"""Stage-1 training throughput from the cache, data loading included: samples/s per epoch, median and range over
rounds, compiled beside eager in one process.

    python benchmarks/train_throughput.py --sessions 24 --duration 45 --batch-size 64 --workers 8 --compile --rounds 3

Writes synthetic sessions, fills a feature store with random 2048-d features (the 3B backbone's width, under the
random-weights fingerprint: the heads' cost does not depend on feature values), then trains the `original`-shape
heads through `vla_lib.training.train` and prints samples/s of each epoch (the first includes warm-up). A run whose
logged loss or gradient norm is not finite prints no throughput (training itself stops on one: train.FiniteGuard).
`compare_compiled_to_eager` (also a step of scripts/gpu_check.py) trains the heads compiled and eager on the same
batches and reports their losses step by step.
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


def compare_compiled_to_eager(params: str, steps: int = 50, batch_size: int = 64,
                              modes: tuple = ("default", "reduce-overhead"), n_batches: int = 8,
                              fp32_modes: tuple = ("default",)) -> dict:
    """The heads of `params`' model section, dropout 0, trained `steps` AdamW steps on the same batches (the params'
    sessions, random 2048-d VL features with each sample's view mask), compiled in each of `modes` under bf16
    autocast on CUDA (as training runs) and in each of `fp32_modes` in fp32 without TF32, and eager in both.

    Whether the compiled graph computes eager's function is asked at every step, on the compiled run's own weights:
    a shadow eager copy loads them and computes the same batch's loss and gradient norm (`step_loss_rel_max`,
    `step_grad_rel_max`: the largest relative differences over the run). Free-running trajectories are reported
    too (`rel_diff_last`, `rel_to_fp32_last`, `bf16_noise_floor`: eager bf16 against eager fp32 at the last step),
    but they only describe chaos: two float orders of the same training part by orders of magnitude within 50
    AdamW steps (fp32 compiled vs eager: 1e-7 at step 1, 4e-3 at step 50 on an H100), so they test nothing.
    Raises on any non-finite loss or gradient norm."""
    import copy
    import math

    from vla_lib.data.batches import collate
    from vla_lib.data.normalization import compute_stats
    from vla_lib.data.samples import SampleDataset
    from vla_lib.train import loss_fn
    from vla_lib.train_data import build_model
    from vla_lib.train_objective import param_groups

    cfg = RunConfig.from_yaml(params).with_overrides({"model.dropout": 0.0})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    index = build_index(cfg.data, verbose=False)
    data = SampleDataset(index, cfg.data)
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(n_batches):
        rows = torch.randperm(len(index), generator=gen)[:batch_size].tolist()
        b = collate([data[i] for i in rows])
        views = torch.tensor([[p is not None for p in index.view_paths(i)] + [True] for i in rows])
        b["vl"] = torch.randn(len(rows), views.shape[1], 2048, generator=gen)
        b["vl_mask"] = views
        batches.append(b)
    torch.manual_seed(0)
    base = build_model(cfg, compute_stats(index), 2048).to(device).train()

    def loss_and_grad(model, batch, bf16):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):
            loss = loss_fn(model, batch, cfg, 1.0, device)[0]  # training's own loss
        loss.backward()
        return loss, torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad_norm)

    def run(mode, bf16=True):
        """(losses, per-step relative loss and gradient-norm differences to eager on the same weights)."""
        torch._dynamo.reset()
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # fp32 runs: true fp32
        model, shadow = copy.deepcopy(base), (copy.deepcopy(base) if mode != "eager" else None)
        if mode != "eager":
            model.compile(mode=mode)
        for p in model.parameters():  # as the Trainer: gradients zeroed in place (see train.Trainer.setup)
            p.grad = torch.zeros_like(p)
        opt = torch.optim.AdamW(param_groups(model, cfg.train), fused=device.type == "cuda" or None)
        losses, step_diff = [], []
        for k in range(steps):
            batch = batches[k % len(batches)]
            if shadow is not None:  # eager on this run's current weights (module.compile keeps the state's keys)
                shadow.load_state_dict(model.state_dict())
                ref_loss, ref_grad = (float(v.detach()) for v in loss_and_grad(shadow, batch, bf16))
                shadow.zero_grad(set_to_none=True)
            loss, grad = loss_and_grad(model, batch, bf16)
            opt.step()
            opt.zero_grad(set_to_none=False)
            losses.append((float(loss.detach()), float(grad)))
            if shadow is not None:
                step_diff.append((abs(losses[-1][0] - ref_loss) / abs(ref_loss),
                                  abs(losses[-1][1] - ref_grad) / max(abs(ref_grad), 1e-12)))
        bad = [k + 1 for k, (l, g) in enumerate(losses) if not (math.isfinite(l) and math.isfinite(g))]
        if bad:
            raise RuntimeError(f"{mode}: non-finite loss or gradient norm at steps {bad[:5]} (first: {losses[bad[0] - 1]})")
        return [l for l, _ in losses], step_diff

    out = {}
    eager = {True: run("eager")[0], False: run("eager", bf16=False)[0] if fp32_modes else None}
    for mode, bf16 in [(m, True) for m in modes] + [(m, False) for m in fp32_modes]:
        (losses, step_diff), ref = run(mode, bf16), eager[bf16]
        rel = [abs(a - b) / abs(b) for a, b in zip(losses, ref)]
        out[mode if bf16 else f"{mode}/fp32"] = {
            "step_loss_rel_max": max(d for d, _ in step_diff), "step_grad_rel_max": max(g for _, g in step_diff),
            "loss_last": losses[-1], "eager_last": ref[-1], "rel_diff_last": rel[-1], "rel_diff_max": max(rel),
            "loss_first": losses[0], "eager_first": ref[0], "rel_diff_first": rel[0],
            # how far this run ends from the fp32 eager trajectory (None without an fp32 reference)
            "rel_to_fp32_last": abs(losses[-1] - eager[False][-1]) / abs(eager[False][-1]) if eager[False] else None}
    if eager[False] is not None:
        out["bf16_noise_floor"] = abs(eager[True][-1] - eager[False][-1]) / abs(eager[False][-1])
    return out


if __name__ == "__main__":
    main()
