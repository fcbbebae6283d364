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
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from vla_lib.commands import command_for
from vla_lib.data.normalization import compute_stats
from vla_lib.data.batches import FeatureJoinedDataset, collate, to_device
from vla_lib.data.sampler import DistributedWeightedSampler
from vla_lib.data.samples import SampleDataset, build_index
from vla_lib.data.split import split_sessions
from vla_lib.errors import ConfigError
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
    """Every generator's state as tensors and plain numbers, so the resume state loads with weights_only=True."""
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
             "numpy_pos": int(np_pos), "numpy_has_gauss": int(np_has_gauss), "numpy_gauss": float(np_gauss),
             "python_version": int(py_version), "python_state": torch.tensor(py_state, dtype=torch.int64),
             "python_gauss": py_gauss}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    random.setstate((state["python_version"], tuple(state["python_state"].tolist()), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------------
# Settings a resumed run must share with the run it continues. The others change nothing the weights depend on
# (logging, workers, paths, step limits, the eval section), so a resume honours a change of them.
# ---------------------------------------------------------------------------------------------------------------
RESUME_FREE = ("run_name", "output_root", "synthetic.", "eval.", "data.root", "cache.dir", "cache.batch_size",
               "cache.num_workers", "cache.shard_size", "cache.allow_inline_encoding", "backbone.device",
               "backbone.tiny_model_dir", "backbone.fast_", "train.num_workers", "train.log_every_steps",
               "train.save_every_steps", "train.max_steps", "train.output_dir", "train.wandb_")


def settings_changed(stored: dict, current: dict) -> list[str]:
    """The settings that differ between a stored run config and the current one, ignoring RESUME_FREE ones."""
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "clock_offsets" else {prefix + k: v})
        return out
    a, b = flat(stored), flat(current)
    # A setting added after the stored run was saved, at its default value, is the behaviour that run had (e.g. the
    # Stage-2 fields for a Stage-1 run): not a change.
    defaults = flat(_default_settings())
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not k.startswith(RESUME_FREE)
            and not (k not in a and k in defaults and b.get(k) == defaults[k])]


def _default_settings() -> dict:
    from vla_lib.config import RunConfig

    return RunConfig().to_dict()


class RunStateError(RuntimeError):
    """A run folder that cannot be continued with these settings (finished, or other settings)."""


# ---------------------------------------------------------------------------------------------------------------
# The steps of a run
# ---------------------------------------------------------------------------------------------------------------
def load_data(cfg, say, is_main: bool):
    """(train index, val index, split, stats): the episode split and the training-split statistics."""
    index = build_index(cfg.data, verbose=is_main)  # prints each added and each skipped session
    train_ids, val_ids = split_sessions(index, cfg.data)
    train_index, val_index = index.subset(train_ids), index.subset(val_ids)
    say(f"Train: {len(train_index)} samples / Val: {len(val_index)} samples (split by episode: "
        f"{len(train_ids)} / {len(val_ids)} sessions)")
    return train_index, val_index, {"train": train_ids, "val": val_ids}, compute_stats(train_index)


def load_features(cfg, train_index, val_index, say):
    """(train FeatureTable, val FeatureTable, store) from the VL cache; a miss or damaged shard stops with the
    command that builds them (or encodes inline when cache.allow_inline_encoding)."""
    from vla_lib.vlm.cache_build import build_cache, link_store, open_store

    store = open_store(cfg)
    keys = list(train_index.table.cache_key) + list(val_index.table.cache_key)
    missing = store.missing(keys)
    if missing and not cfg.cache.allow_inline_encoding:
        raise CacheMissError(missing, store.dir, command_for(cfg, "cache"), store.bad_shards)
    if missing:
        say(f"{len(missing)} cache misses: encoding inline (cache.allow_inline_encoding)")
        build_cache(cfg)
        store = open_store(cfg)
    fix = command_for(cfg, "cache")
    link_store(cfg, store)
    return FeatureTable(store, train_index.table.cache_key, fix), FeatureTable(store, val_index.table.cache_key, fix), \
        store


def build_model(cfg, stats, vl_dim: int) -> Stage1Policy:
    """The heads for features of width `vl_dim` (the backbone's hidden size, read from the store)."""
    if cfg.model.vl_dim not in (0, vl_dim):
        raise ConfigError(f"model.vl_dim is {cfg.model.vl_dim} but the feature store holds {vl_dim}-d features: "
                          "leave model.vl_dim unset (it comes from the backbone)")
    return Stage1Policy(replace(cfg.model, vl_dim=int(vl_dim)), *stats.action_arrays(), *stats.sensor_arrays())


def read_resume(path: Path, cfg) -> dict | None:
    """The saved resume state of this run folder, or None. Refuses a run with other settings, saying what differs."""
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain values only: no pickle
    changed = settings_changed(state["run_config"], cfg.to_dict())
    if changed:
        raise RunStateError(f"{path.parent.parent} holds a run with other settings ({'; '.join(changed)}). Start a new "
                            "run with --run-name NAME (or another train.output_dir), or restore those settings")
    return state


def load_resume(state: dict, model, optimizer, scheduler, acc) -> dict:
    """Restore weights, optimiser, schedule and this rank's RNG; returns the progress with the epoch's running sums
    so far (so the epoch's train loss stays exact across the restart)."""
    acc.unwrap_model(model).load_state_dict(state["model"])
    optimizer.optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    mine = state["ranks"][acc.process_index]
    _set_rng_state(mine["rng"])
    return {**state["progress"], "totals": mine["totals"]}


def trim_metrics(path: Path, progress: dict) -> None:
    """Drop the rows logged after the resume state was saved: they are about to be logged again."""
    if not path.exists():
        return
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    keep = [r for r in rows if (r["epoch"] <= progress["epoch"] if "train/loss_epoch" in r
                                else r["step"] <= progress["global_step"])]
    path.write_text("".join(json.dumps(r) + "\n" for r in keep))


def loss_fn(model, batch: dict, cfg, mean_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, per-sample MSE, per-sample weight): the one loss of training and validation."""
    pred = model(batch["vl"], batch["vl_mask"], batch["sensor"], batch["sensor_mask"], batch["has_sensor"],
                 batch["history"])
    target = _unwrap(model).normalize_actions(batch["target"])
    per_sample = masked_mse(pred.float(), target, batch["target_mask"])
    w = sample_weights(batch, cfg.train).to(per_sample.device)
    return (per_sample * w).mean() / mean_weight, per_sample, w


def _unwrap(model):
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)


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
    say(f"Running in TRAIN mode on {acc.num_processes} process(es) ({acc.device}, mixed precision {mp}); run folder "
        f"{out}")
    say(f"  fusion: {cfg.model.fusion}, lr {tc.lr:g}, sensor lr {tc.sensor_lr:g}, sensor loss weight "
        f"{tc.sensor_loss_weight:g}, batch {tc.batch_size} x accum {tc.grad_accum_steps} x {acc.num_processes} proc")
    resume_file = ckpt_dir / "resume_state.pt"
    resume = read_resume(resume_file, cfg)
    if resume is not None and resume["progress"]["epoch"] >= tc.epochs:  # never rewrite a finished run
        p = resume["progress"]
        say(f"{out} is a finished run ({p['epoch']} epochs, best val {p['best_val']:.6f}): nothing to train, nothing "
            "rewritten. Start a new run with --run-name NAME, or extend this one in a new run folder "
            "(--run-name NAME --epochs N)")
        summary_file = out / "train_summary.json"
        return json.loads(summary_file.read_text()) if summary_file.exists() else {"finished": True}

    # -- data, features, model, optimiser ----------------------------------------------------------------------
    train_index, val_index, split, stats = load_data(cfg, say, acc.is_main_process)
    train_features, val_features, store = load_features(cfg, train_index, val_index, say)
    model = build_model(cfg, stats, train_features.features.shape[-1])
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
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(steps_per_epoch * tc.epochs, tc))
    if tc.compile:  # in place: fewer kernel launches per step, same parameter names in checkpoints
        model.compile(mode=tc.compile_mode)
        say(f"Heads compiled in place (torch.compile, mode {tc.compile_mode}); the first steps include compilation")
    model, optimizer = acc.prepare(model, optimizer)  # one prepare; our sampler already splits ranks
    mean_weight = float(np.mean(np.where(train_index.table.has_sensor, tc.sensor_loss_weight, tc.nonsensor_confidence)))

    # -- auto-resume -------------------------------------------------------------------------------------------
    metrics_file = out / "metrics.jsonl"
    progress = load_resume(resume, model, optimizer, scheduler, acc) if resume is not None else None
    if progress is None:
        progress = {"epoch": 0, "micro": 0, "global_step": 0, "best_val": float("inf"), "totals": [0.0] * 4}
        if acc.is_main_process and metrics_file.exists():
            metrics_file.unlink()  # a fresh run: no rows of an earlier, unsaved attempt
    else:
        say(f"Resumed from {resume_file}: epoch {progress['epoch'] + 1}, micro-batch {progress['micro']}, "
            f"step {progress['global_step']}, best val {progress['best_val']:.6f}")
        if acc.is_main_process:
            trim_metrics(metrics_file, progress)
    features_info = {"fingerprint": store.fingerprint, "parts": store.parts}

    def save_resume(totals: torch.Tensor) -> None:
        mine = {"rng": _rng_state(), "totals": totals.tolist()}
        ranks = acc.gather_for_metrics([mine], use_gather_object=True) if acc.num_processes > 1 else [mine]
        if acc.is_main_process:
            state = {k: v for k, v in progress.items() if k != "totals"}
            atomic_save({"model": acc.unwrap_model(model).state_dict(), "optimizer": optimizer.optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "progress": state, "ranks": ranks,
                         "run_config": cfg.to_dict()}, resume_file)

    def save_heads(name: str, val_loss: float) -> Path:
        path = ckpt_dir / name
        if acc.is_main_process:
            save_checkpoint(path, acc.unwrap_model(model), stats, cfg, progress["epoch"], progress["global_step"],
                            val_loss, split, features_info)
        return path

    wandb_run = _wandb(cfg, acc, counts)

    def record(row: dict) -> None:
        if acc.is_main_process:
            with open(metrics_file, "a") as f:
                f.write(json.dumps(row) + "\n")
            if wandb_run is not None:
                wandb_run.log({k: v for k, v in row.items() if "/" in k}, step=progress["global_step"])

    # -- epochs ------------------------------------------------------------------------------------------------
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
        # weighted loss sum, weight sum, sensor samples, samples: restored on resume, so the epoch's loss is exact
        totals = torch.tensor(progress.pop("totals", [0.0] * 4), device=acc.device)
        window_loss = torch.zeros((), device=acc.device)  # the micro-batch losses of this optimiser step
        epoch_start = time.perf_counter()
        bar = tqdm(total=steps_per_epoch, initial=progress["micro"] // tc.grad_accum_steps,
                   disable=not acc.is_main_process, desc=f"epoch {epoch + 1}/{tc.epochs}")
        for batch in loader:
            if progress["micro"] >= micro_per_epoch:
                break
            batch = to_device(batch, acc.device)
            with acc.accumulate(model):
                loss, per_sample, w = loss_fn(model, batch, cfg, mean_weight)
                acc.backward(loss)
                grad_norm = acc.clip_grad_norm_(model.parameters(), tc.clip_grad_norm) if acc.sync_gradients else None
                optimizer.step()
                if acc.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
            totals += torch.stack([(per_sample * w).sum().detach(), w.sum(), batch["has_sensor"].sum(),
                                   w.new_full((), float(len(w)))])  # built on the device: no host copy
            window_loss += loss.detach()
            progress["micro"] += 1
            if grad_norm is None:
                continue
            # an optimiser step was taken: its loss is the mean over the window's micro-batches and the ranks
            progress["global_step"] += 1
            bar.update(1)
            if progress["global_step"] % tc.log_every_steps == 0:
                # reading loss/grad back is a host sync: every log_every_steps steps, not every step
                step_loss = float(acc.reduce(window_loss, reduction="mean")) / tc.grad_accum_steps
                seen = acc.reduce(totals.clone(), reduction="sum")
                lr = scheduler.get_last_lr()[0]
                bar.set_postfix_str(f"loss: {step_loss:.6f}, lr: {lr:.2e}, grad: {float(grad_norm):.2f}, "
                                    f"sensor: {int(seen[2])}/{int(seen[3])}")
                record({"step": progress["global_step"], "epoch": epoch + 1, "train/loss_step": step_loss,
                        "train/lr": lr, "train/grad_norm": float(grad_norm)})
            window_loss.zero_()
            if tc.save_every_steps and progress["global_step"] % tc.save_every_steps == 0:
                save_resume(totals)
            if tc.max_steps and progress["global_step"] >= tc.max_steps:
                stop = True
                break
        bar.close()
        if stop and progress["micro"] < micro_per_epoch:
            save_resume(totals)
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
        if val_loss < progress["best_val"]:
            progress["best_val"] = val_loss
            path = save_heads(CHECKPOINT_NAMES["best"], val_loss)
            say(f"[Best] Validation improved → saved to {path}")
        save_heads(CHECKPOINT_NAMES["latest"], val_loss)
        if progress["epoch"] >= tc.epochs:
            save_heads(CHECKPOINT_NAMES["final"], val_loss)
        save_resume(torch.zeros(4, device=acc.device))
        acc.wait_for_everyone()
    equal = _weights_equal_across_ranks(model, acc)
    if wandb_run is not None:
        wandb_run.finish()
    acc.wait_for_everyone()
    epochs = _epoch_rows(metrics_file) if acc.is_main_process else history
    summary = {"history": epochs, "best_val": progress["best_val"], "global_step": progress["global_step"],
               "epochs_done": progress["epoch"], "finished": progress["epoch"] >= tc.epochs,
               "parameter_counts": counts, "weights_equal_across_ranks": equal, "processes": acc.num_processes,
               "checkpoint_dir": str(ckpt_dir), "split": split}
    if acc.is_main_process:
        (out / "train_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _epoch_rows(metrics_file: Path) -> list[dict]:
    """Every epoch of the run (also those before a resume), from its metrics log."""
    if not metrics_file.exists():
        return []
    return [r for r in map(json.loads, metrics_file.read_text().splitlines()) if "train/loss_epoch" in r]


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
    for batch in loader:
        _, per_sample, w = loss_fn(model, to_device(batch, acc.device), cfg, mean_weight)
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
