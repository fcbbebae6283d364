"""Stage-1 training with accelerate: the VL backbone frozen (features from the cache), SensorEncoder + Action Expert
trained. Runs as `python -m vla_lib --mode train`, `accelerate launch -m vla_lib --mode train`, or under torchrun.

The loop, in order: data (samples, episode split, stats) -> cached VL features -> model -> optimiser/scheduler ->
auto-resume -> epochs of (train with gradient accumulation, validate, checkpoint). Exact resume: the resume state
holds weights, optimiser, scheduler, sampler position, every rank's RNG, best-so-far; a killed run started again
with the same command ends with the same weights as an uninterrupted one (CPU, deterministic).
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from vla_lib.data.normalization import NormStats, compute_stats
from vla_lib.data.batches import FeatureJoinedDataset, collate, to_device
from vla_lib.data.sampler import DistributedWeightedSampler
from vla_lib.data.samples import SampleDataset, build_index
from vla_lib.data.split import split_sessions
from vla_lib.models.checkpoint import CHECKPOINT_NAMES, atomic_save, save_checkpoint
from vla_lib.models.modeling_policy import POSE_DIMS, Stage1Policy
from vla_lib.vlm.feature_store import CacheMissError, FeatureTable

LOSS_DIMS = POSE_DIMS  # the constant gripper (7th) carries no signal: excluded from loss and metrics


# ---------------------------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------------------------
def sample_weights(batch: dict, cfg) -> torch.Tensor:
    """Per-sample loss weights: sensor_loss_weight for samples with sensor, the original's confidence (0.5) for
    samples without. Normalised by the *training-set* mean weight (a constant), not per micro-batch, so they really
    change the gradient at batch size 1 (the original's per-batch renormalisation made them a no-op)."""
    has = batch["has_sensor"].bool()
    return torch.where(has, cfg.sensor_loss_weight, cfg.nonsensor_confidence).float()


def masked_mse(pred: torch.Tensor, target: torch.Tensor, step_mask: torch.Tensor) -> torch.Tensor:
    """Per-sample MSE over the valid horizon steps and the 6 pose dims."""
    err = (pred[..., :LOSS_DIMS] - target[..., :LOSS_DIMS]) ** 2
    m = step_mask.unsqueeze(-1).to(err.dtype)
    return (err * m).sum((1, 2)) / (m.sum((1, 2)) * LOSS_DIMS).clamp(min=1)


# ---------------------------------------------------------------------------------------------------------------
# Optimiser and schedule
# ---------------------------------------------------------------------------------------------------------------
def param_groups(model: Stage1Policy, cfg) -> list[dict]:
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        sensor = name.startswith(("sensor_encoder.", "null_sensor"))
        decay = p.ndim >= 2 and "queries" not in name and "null_sensor" not in name  # no decay on norms, biases
        key = ("sensor" if sensor else "expert", decay)
        groups.setdefault(key, []).append(p)
    return [{"params": ps, "lr": cfg.sensor_lr if part == "sensor" else cfg.lr,
             "weight_decay": cfg.weight_decay if decay else 0.0, "name": f"{part}_{'decay' if decay else 'no_decay'}"}
            for (part, decay), ps in sorted(groups.items())]


def lr_lambda(total_steps: int, cfg):
    """Warmup -> hold -> cosine down to min_lr/lr, per optimiser step (applied to each group's own lr)."""
    warm = max(1, int(cfg.warmup_ratio * total_steps))
    hold = int(cfg.hold_ratio * total_steps)
    floor = cfg.min_lr / cfg.lr

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if step < warm + hold:
            return 1.0
        progress = min(1.0, (step - warm - hold) / max(1, total_steps - warm - hold))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


# ---------------------------------------------------------------------------------------------------------------
# Resume state
# ---------------------------------------------------------------------------------------------------------------
def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------------
def train(cfg, log=print) -> dict:
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    tc = cfg.train
    on_cuda = torch.cuda.is_available()
    mp = ("bf16" if on_cuda else "no") if tc.mixed_precision == "auto" else tc.mixed_precision
    # cpu=True on a machine without CUDA: under torchrun / accelerate launch that gives MULTI_CPU over gloo.
    acc = Accelerator(mixed_precision=mp, gradient_accumulation_steps=tc.grad_accum_steps, cpu=not on_cuda)
    say = log if acc.is_main_process else (lambda *a, **k: None)
    _seed_everything(tc.seed)
    out = Path(tc.output_dir)
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    say(f"Running in TRAIN mode on {acc.num_processes} process(es) ({acc.device}, mixed precision {mp})")
    say(f"  fusion: {cfg.model.fusion}, lr {tc.lr:g}, sensor lr {tc.sensor_lr:g}, sensor loss weight "
        f"{tc.sensor_loss_weight:g}, batch {tc.batch_size} x accum {tc.grad_accum_steps} x {acc.num_processes} proc")

    # -- data ------------------------------------------------------------------------------------------------------
    index = build_index(cfg.data, verbose=acc.is_main_process)
    train_ids, val_ids = split_sessions(index, cfg.data)
    train_index, val_index = index.subset(train_ids), index.subset(val_ids)
    say(f"Train: {len(train_index)} samples / Val: {len(val_index)} samples (split by episode: "
        f"{len(train_ids)} / {len(val_ids)} sessions)")
    stats = compute_stats(train_index)
    if acc.is_main_process:
        stats.to_json(out / "norm_stats.json")

    from vla_lib.vlm.cache_build import open_store

    store = open_store(cfg)
    missing = store.missing(list(train_index.table.cache_key) + list(val_index.table.cache_key))
    if missing and not cfg.cache.allow_inline_encoding:
        raise CacheMissError(missing, store.dir, f"python -m vla_lib --mode cache --params <params.yaml>  "
                                                 f"(cache.dir={cfg.cache.dir})")
    if missing:
        from vla_lib.vlm.cache_build import build_cache

        say(f"{len(missing)} cache misses: encoding inline (cache.allow_inline_encoding)")
        build_cache(cfg)
        store.refresh()
    train_features = FeatureTable(store, train_index.table["cache_key"])
    val_features = FeatureTable(store, val_index.table["cache_key"])
    vl_dim = train_features.features.shape[-1]

    # -- model -----------------------------------------------------------------------------------------------------
    mcfg = cfg.model
    mcfg.vl_dim, mcfg.horizon, mcfg.sensor_length = int(vl_dim), cfg.data.horizon, cfg.data.sensor_window_size
    if mcfg.history_steps > cfg.data.history_steps:
        raise ValueError(f"model.history_steps ({mcfg.history_steps}) > data.history_steps ({cfg.data.history_steps})")
    mcfg.sensor_enabled = cfg.data.sensor_enabled and mcfg.sensor_enabled
    a_mean, a_std = stats.action_arrays()
    s_mean, s_std = stats.sensor_arrays()
    model = Stage1Policy(mcfg, a_mean, a_std, s_mean, s_std)
    counts = model.parameter_counts()
    say(f"Trainable: Action Expert {counts['action_expert']:,}, Sensor Encoder {counts['sensor_encoder']:,} "
        f"(+{counts['null_sensor']:,} null embedding), total {counts['total_trainable']:,}; frozen (VL backbone, "
        f"cached): not loaded")
    # fused AdamW on CUDA: one kernel for all parameters (the step is a visible share of a 28 ms batch-64 step)
    optimizer = torch.optim.AdamW(param_groups(model, tc), betas=(0.9, 0.999), eps=1e-8, fused=on_cuda or None)

    train_set = FeatureJoinedDataset(SampleDataset(train_index, cfg.data), train_features)
    val_set = FeatureJoinedDataset(SampleDataset(val_index, cfg.data), val_features)
    sampler = DistributedWeightedSampler(train_index.table["weight"], num_replicas=acc.num_processes,
                                         rank=acc.process_index, seed=tc.seed)
    micro_per_epoch = (sampler.per_rank // tc.batch_size) // tc.grad_accum_steps * tc.grad_accum_steps
    steps_per_epoch = micro_per_epoch // tc.grad_accum_steps
    if steps_per_epoch == 0:
        raise ValueError(f"{sampler.per_rank} samples per rank are fewer than one optimiser step "
                         f"(batch {tc.batch_size} x accum {tc.grad_accum_steps})")
    total_steps = steps_per_epoch * tc.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, tc))
    if tc.compile:  # in place: fewer kernel launches per step, same parameter names in checkpoints
        model.compile(mode=tc.compile_mode)
        say(f"Heads compiled in place (torch.compile, mode {tc.compile_mode}); the first steps include compilation")
    model, optimizer = acc.prepare(model, optimizer)  # one prepare; our sampler already splits ranks
    mean_weight = float(np.mean(np.where(train_index.table.has_sensor, tc.sensor_loss_weight, tc.nonsensor_confidence)))

    # -- auto-resume -----------------------------------------------------------------------------------------------
    progress = {"epoch": 0, "micro": 0, "global_step": 0, "best_val": float("inf")}
    resume_file = ckpt_dir / "resume_state.pt"
    if resume_file.exists():
        state = torch.load(resume_file, map_location="cpu", weights_only=False)  # our own file: RNG states inside
        acc.unwrap_model(model).load_state_dict(state["model"])
        optimizer.optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        progress = state["progress"]
        _set_rng_state(state["rng"][acc.process_index])
        say(f"Resumed from {resume_file}: epoch {progress['epoch'] + 1}, micro-batch {progress['micro']}, "
            f"step {progress['global_step']}, best val {progress['best_val']:.6f}")

    def save_resume() -> None:
        rngs = acc.gather_for_metrics([_rng_state()], use_gather_object=True) if acc.num_processes > 1 else [_rng_state()]
        if acc.is_main_process:
            atomic_save({"model": acc.unwrap_model(model).state_dict(), "optimizer": optimizer.optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "progress": dict(progress), "rng": rngs}, resume_file)

    def save_heads(name: str, val_loss: float) -> Path:
        path = ckpt_dir / name
        if acc.is_main_process:
            save_checkpoint(path, acc.unwrap_model(model), stats, cfg, progress["epoch"], progress["global_step"],
                            val_loss)
        return path

    wandb_run = _wandb(cfg, acc, counts)
    metrics_file = out / "metrics.jsonl"

    def record(row: dict) -> None:
        if acc.is_main_process:
            with open(metrics_file, "a") as f:
                f.write(json.dumps(row) + "\n")
            if wandb_run is not None:
                wandb_run.log({k: v for k, v in row.items() if "/" in k}, step=progress["global_step"])

    # -- epochs ----------------------------------------------------------------------------------------------------
    history = []
    stop = False
    # One loader for the whole run, its workers kept between epochs (starting them costs ~1 s an epoch). The sampler
    # is set before each epoch's iter(): it runs in this process, so position and epoch are what we set. Workers
    # hold no randomness (sample loading is deterministic), so their seeds do not affect a resumed run.
    loader = DataLoader(train_set, batch_size=tc.batch_size, sampler=sampler, num_workers=tc.num_workers,
                        collate_fn=collate, drop_last=True, pin_memory=on_cuda, persistent_workers=tc.num_workers > 0,
                        generator=torch.Generator().manual_seed(tc.seed))
    while progress["epoch"] < tc.epochs and not stop:
        epoch = progress["epoch"]
        model.train()
        sampler.set_epoch(epoch)
        sampler.load_state_dict({"epoch": epoch, "position": progress["micro"] * tc.batch_size, "seed": tc.seed})
        totals = torch.zeros(4, device=acc.device)  # weighted loss sum, weight sum, sensor samples, samples
        epoch_start = time.perf_counter()
        bar = tqdm(total=steps_per_epoch, initial=progress["micro"] // tc.grad_accum_steps,
                   disable=not acc.is_main_process, desc=f"epoch {epoch + 1}/{tc.epochs}")
        for batch in loader:
            if progress["micro"] >= micro_per_epoch:
                break
            batch = to_device(batch, acc.device)
            with acc.accumulate(model):
                pred = model(batch["vl"], batch["vl_mask"], batch["sensor"], batch["sensor_mask"],
                             batch["has_sensor"], batch["history"])
                target = acc.unwrap_model(model).normalize_actions(batch["target"])
                per_sample = masked_mse(pred.float(), target, batch["target_mask"])
                w = sample_weights(batch, tc).to(per_sample.device)
                loss = (per_sample * w).mean() / mean_weight
                acc.backward(loss)
                grad_norm = None
                if acc.sync_gradients:
                    grad_norm = acc.clip_grad_norm_(model.parameters(), tc.clip_grad_norm)
                optimizer.step()
                if acc.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
            totals += torch.stack([(per_sample * w).sum().detach(), w.sum(), batch["has_sensor"].sum(),
                                   w.new_full((), float(len(w)))])  # built on the device: no host copy
            progress["micro"] += 1
            if grad_norm is not None:  # an optimiser step was taken
                progress["global_step"] += 1
                bar.update(1)
                if progress["global_step"] % tc.log_every_steps == 0:
                    # reading loss/grad back is a host sync: every log_every_steps steps, not every step
                    seen = acc.reduce(totals.clone(), reduction="sum")
                    lr = scheduler.get_last_lr()[0]
                    bar.set_postfix_str(f"loss: {loss.item() * tc.grad_accum_steps:.6f}, lr: {lr:.2e}, grad: "
                                        f"{float(grad_norm):.2f}, sensor: {int(seen[2])}/{int(seen[3])}")
                    record({"step": progress["global_step"], "epoch": epoch + 1, "train/loss_step": loss.item(),
                            "train/lr": lr, "train/grad_norm": float(grad_norm)})
                if tc.save_every_steps and progress["global_step"] % tc.save_every_steps == 0:
                    save_resume()
                if tc.max_steps and progress["global_step"] >= tc.max_steps:
                    stop = True
                    break
        bar.close()
        if stop and progress["micro"] < micro_per_epoch:
            save_resume()
            break
        seen = acc.reduce(totals, reduction="sum")
        samples_per_s = float(seen[3]) / (time.perf_counter() - epoch_start)  # all ranks, data loading included
        train_loss = float(seen[0] / seen[1].clamp(min=1e-9))
        val_loss = evaluate_loss(model, val_set, cfg, acc, mean_weight)
        progress["epoch"], progress["micro"] = epoch + 1, 0
        row = {"epoch": epoch + 1, "step": progress["global_step"], "train/loss_epoch": train_loss,
               "val/loss_epoch": val_loss, "train/sensor_samples": int(seen[2]),
               "train/nonsensor_samples": int(seen[3] - seen[2]), "train/samples_per_s": samples_per_s}
        history.append(row)
        record(row)
        say(f"Epoch {epoch + 1} | Train: {train_loss:.6f} | Val: {val_loss:.6f} | {samples_per_s:.0f} samples/s")
        improved = val_loss < progress["best_val"]
        if improved:
            progress["best_val"] = val_loss
            path = save_heads(CHECKPOINT_NAMES["best"], val_loss)
            say(f"[Best] Validation improved → saved to {path}")
        save_heads(CHECKPOINT_NAMES["latest"], val_loss)
        save_resume()
        acc.wait_for_everyone()
    if progress["epoch"] >= tc.epochs:
        save_heads(CHECKPOINT_NAMES["final"], history[-1]["val/loss_epoch"] if history else float("nan"))
    equal = _weights_equal_across_ranks(model, acc)
    if wandb_run is not None:
        wandb_run.finish()
    acc.wait_for_everyone()
    summary = {"history": history, "best_val": progress["best_val"], "global_step": progress["global_step"],
               "parameter_counts": counts, "weights_equal_across_ranks": equal, "processes": acc.num_processes,
               "checkpoint_dir": str(ckpt_dir)}
    if acc.is_main_process:
        (out / "train_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


@torch.no_grad()
def evaluate_loss(model, val_set, cfg, acc, mean_weight: float) -> float:
    """Weighted validation loss in eval mode, each rank a disjoint part, reduced across processes."""
    if len(val_set) == 0:
        return float("nan")
    model.eval()
    mine = list(range(acc.process_index, len(val_set), acc.num_processes))
    loader = DataLoader(torch.utils.data.Subset(val_set, mine), batch_size=max(cfg.train.batch_size, 32),
                        collate_fn=collate, num_workers=cfg.train.num_workers)
    totals = torch.zeros(2, device=acc.device)
    inner = acc.unwrap_model(model)
    for batch in loader:
        batch = to_device(batch, acc.device)
        pred = model(batch["vl"], batch["vl_mask"], batch["sensor"], batch["sensor_mask"], batch["has_sensor"],
                     batch["history"])
        per_sample = masked_mse(pred.float(), inner.normalize_actions(batch["target"]), batch["target_mask"])
        w = sample_weights(batch, cfg.train).to(per_sample.device)
        totals += torch.stack([(per_sample * w).sum(), w.sum()])
    totals = acc.reduce(totals, reduction="sum")
    model.train()
    return float(totals[0] / totals[1].clamp(min=1e-9))


def _weights_equal_across_ranks(model, acc) -> bool:
    flat = torch.cat([p.detach().float().flatten() for p in acc.unwrap_model(model).parameters()])
    digest = torch.stack([flat.sum(), (flat * flat).sum(), flat[::97].sum()]).to(acc.device)
    gathered = acc.gather(digest.unsqueeze(0))
    return bool(torch.allclose(gathered, gathered[:1].expand_as(gathered), rtol=0, atol=0))


def _wandb(cfg, acc, counts):
    if not acc.is_main_process or cfg.train.wandb_mode == "disabled" or os.environ.get("WANDB_MODE") == "disabled":
        return None
    try:
        import wandb
    except ImportError:
        return None
    return wandb.init(project=cfg.train.wandb_project, name=cfg.run_name, mode=cfg.train.wandb_mode,
                      dir=cfg.train.output_dir, config={**cfg.to_dict(), "parameter_counts": counts})
