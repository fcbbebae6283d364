"""Stage-2 training with accelerate: LoRA on the VL backbone's language model + the Stage-1 heads, from a Stage-1
checkpoint. Runs as `python -m vla_lib --mode train --training-stage stage2 --finetune-vl lora --stage1-checkpoint
PATH` (also under `accelerate launch` / torchrun), or from notebook 03 with a Stage-2 params file.

What it shares with Stage 1 (vla_lib/train.py, not copied): the loss (`masked_mse`, `sample_weights`, the
training-set mean weight), the optimiser groups and schedule (`param_groups`, `lr_lambda`; LoRA gets its own group at
`train.vl_lr`), the exact resume (`read_resume`, `load_resume`, RNG state, `trim_metrics`, running epoch sums), the
checkpoint names, `metrics.jsonl` rows and wandb names. What differs: the heads, their normalisation statistics and
the episode split come from the Stage-1 checkpoint (validation stays held out); every step encodes the views with
gradients through the LM (vision tokens from the frame-level vision cache, or the vision tower without gradients);
the resume state and the checkpoints hold the heads and the adapter, never the base weights.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from vla_lib.errors import ConfigError
from vla_lib.models.checkpoint import CHECKPOINT_NAMES, atomic_save, load_checkpoint, save_checkpoint
from vla_lib.train import (RunStateError, _epoch_rows, _rng_state, _seed_everything, _wandb,  # noqa: F401
                           load_resume, lr_lambda, masked_mse, param_groups,
                           read_resume, sample_weights, settings_changed, trim_metrics)


# ---------------------------------------------------------------------------------------------------------------
# The model: heads + the LoRA-adapted backbone
# ---------------------------------------------------------------------------------------------------------------
class Stage2Model(torch.nn.Module):
    """`heads` (Stage1Policy) over features the LoRA-adapted LM computes with gradients. Its trainable state is the
    heads' state dict (`heads.*`) and the adapter's tensors (`lora.*`); the frozen base weights are never saved."""

    def __init__(self, heads, peft_model, gradient_checkpointing: bool = True):
        super().__init__()
        self.heads = heads
        self.vl = peft_model
        self.gradient_checkpointing = gradient_checkpointing

    def features(self, plan, image_tokens) -> torch.Tensor:
        from vla_lib.stage2.encode_lm import lm_features

        return lm_features(self.vl, plan, image_tokens, self.gradient_checkpointing and self.training)

    def forward(self, plan, image_tokens, sensor, sensor_mask, has_sensor, history) -> torch.Tensor:
        return self.heads(self.features(plan, image_tokens), plan.token_mask, sensor, sensor_mask, has_sensor, history)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        from vla_lib.stage2.lora import adapter_state

        state = {f"heads.{k}": v.detach().cpu().clone() for k, v in self.heads.state_dict().items()}
        state.update({f"lora.{k}": v.detach().cpu().clone() for k, v in adapter_state(self.vl).items()})
        return state

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        """Loads a `trainable_state` (what the resume state holds): heads and adapter, every key required."""
        from peft import set_peft_model_state_dict

        heads = {k.removeprefix("heads."): v for k, v in state.items() if k.startswith("heads.")}
        lora = {k.removeprefix("lora."): v for k, v in state.items() if k.startswith("lora.")}
        self.heads.load_state_dict(heads, strict=True)
        result = set_peft_model_state_dict(self.vl, lora)
        unexpected = getattr(result, "unexpected_keys", [])
        if strict and (unexpected or not lora):
            raise RuntimeError(f"adapter state does not match the model: unexpected {unexpected[:5]}")
        return result

    def lora_parameters(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.vl.named_parameters() if "lora_" in n and p.requires_grad]


def stage2_loss(model, inputs: dict, batch: dict, cfg, mean_weight: float):
    """(loss, per-sample MSE, per-sample weight): Stage 1's loss (train.masked_mse, train.sample_weights) on the
    predictions of the heads over the LoRA features."""
    pred = model(inputs["plan"], inputs["image_tokens"], batch["sensor"], batch["sensor_mask"], batch["has_sensor"],
                 batch["history"])
    heads = _unwrap(model).heads
    per_sample = masked_mse(pred.float(), heads.normalize_actions(batch["target"]), batch["target_mask"])
    w = sample_weights(batch, cfg.train).to(per_sample.device)
    return (per_sample * w).mean() / mean_weight, per_sample, w


def _unwrap(model):
    return getattr(model, "module", model)


# ---------------------------------------------------------------------------------------------------------------
# Inputs: samples with their frames, turned into an LM plan + image tokens
# ---------------------------------------------------------------------------------------------------------------
class FrameSamples(torch.utils.data.Dataset):
    """A SampleDataset whose items also carry the instruction and each present view's frame (key, path)."""

    def __init__(self, samples, frames_of: list[list[tuple[str, str]]]):
        self.samples, self.frames_of = samples, frames_of

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        item = self.samples[i]
        item["instruction"] = self.samples.index.table.at[i, "instruction"]
        item["frames"] = self.frames_of[i]
        return item


def collate_frames(items: list[dict]) -> dict:
    out = {k: torch.as_tensor(np.stack([np.asarray(it[k]) for it in items]))
           for k in ("sensor", "sensor_mask", "history", "target", "target_mask", "has_sensor", "weight", "index",
                     "view_mask")}
    out["instruction"] = [it["instruction"] for it in items]
    out["frames"] = [it["frames"] for it in items]
    return out


def sample_frames(index) -> tuple[list[list[tuple[str, str]]], dict[str, str]]:
    """Per sample the (frame key, path) of each present view in slot order; and every distinct frame key -> path.
    The key is the frame's identity in the Stage-1 cache key (path under the data root, size, mtime)."""
    from vla_lib.data.samples import _frame_ids
    from vla_lib.stage2.vision_cache import frame_key

    memo: dict[str, str] = {}
    per_sample = []
    for i in range(len(index)):
        row = []
        for p in index.view_paths(i):
            if p is None:
                continue
            if str(p) not in memo:
                memo[str(p)] = frame_key(_frame_ids([Path(p)], index.data_root)[0])
            row.append((memo[str(p)], str(p)))
        per_sample.append(row)
    return per_sample, {k: p for p, k in memo.items()}


class InputBuilder:
    """Turns a collated batch into {"plan": LMPlan on the device, "image_tokens": (N, D) on the device}: from the
    vision cache (tokens looked up, prompt tokenised from the frames' grids) or from pixels (processor + the frozen
    vision tower, no gradients)."""

    def __init__(self, vl, processor, cfg, device, cache=None):
        self.vl, self.processor, self.cfg, self.device, self.cache = vl, processor, cfg, device, cache
        self.budget = cfg.backbone.image_resize_height * cfg.backbone.image_resize_width
        self._grids: dict[str, tuple] = {}
        from vla_lib.stage2.encode_lm import inner_model

        vcfg = inner_model(vl).config.vision_config
        self.patch, self.merge = vcfg.patch_size, vcfg.spatial_merge_size

    def grid(self, key: str, path: str) -> tuple:
        from vla_lib.stage2.vision_cache import frame_grid

        if key not in self._grids:
            self._grids[key] = frame_grid(path, self.budget, self.patch, self.merge)
        return self._grids[key]

    def __call__(self, batch: dict) -> dict:
        from vla_lib.stage2.encode_lm import plan_from_grids, plan_from_processor, vision_tokens

        pooling = self.cfg.cache.pooling
        masks = batch["view_mask"].bool().tolist()
        if self.cache is not None:
            samples = [(instr, m, [self.grid(k, p) for k, p in frames])
                       for instr, m, frames in zip(batch["instruction"], masks, batch["frames"])]
            plan = plan_from_grids(self.vl, self.processor, samples, pooling, self.budget)
            tokens = torch.cat([self.cache.tokens(k) for frames in batch["frames"] for k, _ in frames])
            for (k, _), n in zip([f for frames in batch["frames"] for f in frames],
                                 (plan.grid_thw.prod(-1) // self.merge ** 2).tolist()):
                if self.cache.tokens(k).shape[0] != n:
                    raise RuntimeError(f"vision cache entry {k} holds {self.cache.tokens(k).shape[0]} tokens, the "
                                       f"frame's grid gives {n}")
            return {"plan": plan.to(self.device), "image_tokens": tokens.to(self.device, non_blocking=True)}
        from vla_lib.data.recorder_formats import load_image
        from vla_lib.vlm.encode import prepare_inputs

        dtype = next(self.vl.parameters()).dtype
        inputs = prepare_inputs(self.processor, [([load_image(p) for _, p in frames], instr, m) for instr, m, frames
                                                 in zip(batch["instruction"], masks, batch["frames"])],
                                self.budget, dtype)
        plan = plan_from_processor(self.vl, inputs.batch, inputs.view_masks, pooling)
        tokens = vision_tokens(self.vl, inputs.batch["pixel_values"].to(self.device), plan.grid_thw)
        return {"plan": plan.to(self.device), "image_tokens": tokens}


def use_vision_cache(cfg, model) -> bool:
    """lora.vision_cache: auto = on when the LoRA targets leave the vision tower frozen; on = required (refused when
    they do not: cached tokens of a vision tower being trained would be stale); off = the vision tower every step."""
    from vla_lib.stage2.lora import touches_vision

    touched = touches_vision(model, cfg.lora)
    if touched and cfg.lora.vision_cache == "on":
        raise ConfigError(f"lora.vision_cache: on, but lora.targets {cfg.lora.targets} adapt the vision tower "
                          f"({touched[:3]} ...): its tokens change during training and cannot be cached; set "
                          "lora.vision_cache: off (or auto), or target the language model only")
    return cfg.lora.vision_cache != "off" and not touched


# ---------------------------------------------------------------------------------------------------------------
# Stage-1 start, checkpoints
# ---------------------------------------------------------------------------------------------------------------
def load_stage1(cfg, processor):
    """The Stage-1 checkpoint named by train.stage1_checkpoint: its heads, stats, split; refused when its heads were
    trained on other features (backbone, budget, pooling, views, ...) or with another model section."""
    from vla_lib.models.checkpoint import feature_mismatch
    from vla_lib.vlm.cache_build import store_parts

    path = cfg.train.stage1_checkpoint
    if not path:
        raise ConfigError("Stage 2 starts from Stage-1 heads: set --stage1-checkpoint PATH (train.stage1_checkpoint)")
    if not Path(path).exists():
        raise ConfigError(f"train.stage1_checkpoint: {path} does not exist (train Stage 1 first: --mode train "
                          "--training-stage stage1)")
    ckpt = load_checkpoint(path)
    if ckpt.features.get("parts", {}).get("adapter"):
        raise ConfigError(f"{path} is a Stage-2 checkpoint: Stage 2 starts from Stage-1 heads")
    differs = feature_mismatch(ckpt.features.get("parts", {}), store_parts(cfg, processor)) if ckpt.features else []
    if differs:
        raise ConfigError(f"{path}: its heads were trained on other VL features than these settings give: "
                          + "; ".join(differs) + ". Use the Stage-1 run's backbone, pixel budget, pooling and views")
    model_changes = settings_changed({"model": ckpt.run_config.get("model", {})}, {"model": cfg.to_dict()["model"]})
    if model_changes:
        raise ConfigError(f"{path}: the heads were built with another model section: {'; '.join(model_changes)}")
    return ckpt


def stage2_parts(base_parts: dict, lcfg, sha: str) -> dict:
    """The checkpoint's feature parts: Stage 1's (backbone, budget, pooling, ...) plus the adapter's identity and the
    LoRA settings that change its output (alpha scales it), so a Stage-1 store's fingerprint never matches."""
    return {**base_parts, "adapter": sha, "lora": {"r": int(lcfg.r), "alpha": float(lcfg.alpha),
                                                  "targets": sorted(lcfg.targets)}}


def save_stage2_checkpoint(path: Path, model: Stage2Model, stats, cfg, epoch, step, val_loss, split,
                           base_parts: dict) -> None:
    """The heads file (Stage 1's format) + the adapter in peft's format in `<name>.adapter/` beside it."""
    from vla_lib.stage2.lora import adapter_dir_for, save_adapter
    from vla_lib.vlm.feature_store import fingerprint_of

    sha = save_adapter(model.vl, adapter_dir_for(path))
    parts = stage2_parts(base_parts, cfg.lora, sha)
    save_checkpoint(path, model.heads, stats, cfg, epoch, step, val_loss, split,
                    {"fingerprint": fingerprint_of(parts), "parts": parts})


# ---------------------------------------------------------------------------------------------------------------
def setup(cfg, device, say=print, rank: int = 0, world: int = 1, barrier=lambda: None):
    """Everything before the loop, shared by training, the tests and the benchmark: (model, processor, Stage-1
    checkpoint, base feature parts, vision cache or None)."""
    from vla_lib.stage2.lora import inject_lora, lora_parameter_count
    from vla_lib.stage2.vision_cache import VisionCache, vision_parts
    from vla_lib.vlm.backbone import load_backbone
    from vla_lib.vlm.cache_build import store_parts

    bcfg = cfg.backbone
    bcfg.device = str(device)
    bcfg.fast_vision = "off"  # Stage 2 runs its own LM path; the backbone stays a plain module for peft
    backbone = load_backbone(bcfg)
    ckpt = load_stage1(cfg, backbone.processor)
    base_parts = store_parts(cfg, backbone.processor)
    cache = None
    if use_vision_cache(cfg, backbone.model):
        cache = VisionCache(cfg.cache.dir, vision_parts(cfg, backbone.processor))
    peft_model = inject_lora(backbone.model, cfg.lora)
    say(f"LoRA r={cfg.lora.r} alpha={cfg.lora.alpha:g} dropout={cfg.lora.dropout:g} on {list(cfg.lora.targets)}: "
        f"{lora_parameter_count(peft_model):,} parameters; vision cache "
        + (f"on ({cache.dir})" if cache else "off (vision tower every step)"))
    model = Stage2Model(ckpt.heads.train(), peft_model, cfg.lora.gradient_checkpointing).to(device)
    return model, backbone.processor, ckpt, base_parts, cache


def train(cfg, log=print) -> dict:
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from vla_lib.data.sampler import DistributedWeightedSampler
    from vla_lib.data.samples import SampleDataset, build_index
    from vla_lib.vlm.cache_build import link_store  # noqa: F401

    tc = cfg.train
    on_cuda = torch.cuda.is_available()
    mp = ("bf16" if on_cuda else "no") if tc.mixed_precision == "auto" else tc.mixed_precision
    acc = Accelerator(mixed_precision=mp, gradient_accumulation_steps=tc.grad_accum_steps, cpu=not on_cuda)
    say = log if acc.is_main_process else (lambda *a, **k: None)
    _seed_everything(tc.seed)
    out = Path(tc.output_dir)
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    say(f"Running in TRAIN mode, Stage 2 (LoRA + heads) on {acc.num_processes} process(es) ({acc.device}, mixed "
        f"precision {mp}); run folder {out}; from {tc.stage1_checkpoint}")
    say(f"  lr {tc.lr:g}, sensor lr {tc.sensor_lr:g}, VL (LoRA) lr {tc.vl_lr:g}, batch {tc.batch_size} x accum "
        f"{tc.grad_accum_steps} x {acc.num_processes} proc")
    resume_file = ckpt_dir / "resume_state.pt"
    resume = read_resume(resume_file, cfg)
    if resume is not None and resume["progress"]["epoch"] >= tc.epochs:
        p = resume["progress"]
        say(f"{out} is a finished run ({p['epoch']} epochs, best val {p['best_val']:.6f}): nothing to train, nothing "
            "rewritten. Start a new run with --run-name NAME")
        summary_file = out / "train_summary.json"
        return json.loads(summary_file.read_text()) if summary_file.exists() else {"finished": True}

    # -- model (Stage-1 heads + LoRA), data on the Stage-1 split, vision cache ---------------------------------
    model, processor, stage1, base_parts, cache = setup(cfg, acc.device, say)
    stats, split = stage1.stats, stage1.split
    index = build_index(cfg.data, verbose=acc.is_main_process)
    missing = [s for s in split.get("train", []) + split.get("val", []) if s not in index.sessions]
    if missing or not split.get("train"):
        raise ConfigError(f"the Stage-1 checkpoint's sessions are not all usable under data.root: {missing[:5]}")
    train_index, val_index = index.subset(split["train"]), index.subset(split["val"])
    say(f"Train: {len(train_index)} samples / Val: {len(val_index)} samples (the Stage-1 checkpoint's split: "
        f"{len(split['train'])} / {len(split['val'])} sessions)")
    train_frames, frames = sample_frames(train_index)
    val_frames, more = sample_frames(val_index)
    frames.update(more)
    if cache is not None:
        done = cache.build(model.vl, processor, frames, cfg.backbone.image_resize_height *
                           cfg.backbone.image_resize_width, acc.process_index, acc.num_processes,
                           log=lambda *a: None)
        acc.wait_for_everyone()
        cache.store.refresh()
        if acc.is_main_process:
            cache.store.merge_index()
        say(f"Vision cache: {len(frames)} distinct frames, {done} encoded now on this rank ({cache.dir})")
    counts = {**model.heads.parameter_counts(), "lora": sum(p.numel() for p in model.lora_parameters())}
    counts["total_trainable"] = counts["total_trainable"] + counts["lora"]
    say(f"Trainable: LoRA {counts['lora']:,}, Action Expert {counts['action_expert']:,}, Sensor Encoder "
        f"{counts['sensor_encoder']:,}; frozen: the backbone's base weights")
    groups = param_groups(model.heads, tc) + [{"params": model.lora_parameters(), "lr": tc.vl_lr,
                                                "weight_decay": tc.weight_decay, "name": "vl_lora"}]
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8, fused=on_cuda or None)
    train_set = FrameSamples(SampleDataset(train_index, cfg.data), train_frames)
    val_set = FrameSamples(SampleDataset(val_index, cfg.data), val_frames)
    sampler = DistributedWeightedSampler(train_index.table["weight"], num_replicas=acc.num_processes,
                                         rank=acc.process_index, seed=tc.seed)
    micro_per_epoch = (sampler.per_rank // tc.batch_size) // tc.grad_accum_steps * tc.grad_accum_steps
    steps_per_epoch = micro_per_epoch // tc.grad_accum_steps
    if steps_per_epoch == 0:
        raise ValueError(f"{sampler.per_rank} samples per rank are fewer than one optimiser step")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(steps_per_epoch * tc.epochs, tc))
    model, optimizer = acc.prepare(model, optimizer)
    build_inputs = InputBuilder(_unwrap(model).vl, processor, cfg, acc.device, cache)
    mean_weight = float(np.mean(np.where(train_index.table.has_sensor, tc.sensor_loss_weight, tc.nonsensor_confidence)))

    # -- auto-resume (Stage 1's) ---------------------------------------------------------------------------------
    metrics_file = out / "metrics.jsonl"
    progress = load_resume(resume, model, optimizer, scheduler, acc) if resume is not None else None
    if progress is None:
        progress = {"epoch": 0, "micro": 0, "global_step": 0, "best_val": float("inf"), "totals": [0.0] * 4}
        if acc.is_main_process and metrics_file.exists():
            metrics_file.unlink()
    else:
        say(f"Resumed from {resume_file}: epoch {progress['epoch'] + 1}, micro-batch {progress['micro']}, "
            f"step {progress['global_step']}, best val {progress['best_val']:.6f}")
        if acc.is_main_process:
            trim_metrics(metrics_file, progress)

    def save_resume(totals: torch.Tensor) -> None:
        mine = {"rng": _rng_state(), "totals": totals.tolist()}
        ranks = acc.gather_for_metrics([mine], use_gather_object=True) if acc.num_processes > 1 else [mine]
        if acc.is_main_process:
            state = {k: v for k, v in progress.items() if k != "totals"}
            atomic_save({"model": acc.unwrap_model(model).trainable_state(),
                         "optimizer": optimizer.optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "progress": state, "ranks": ranks, "run_config": cfg.to_dict()}, resume_file)

    def save_heads(name: str, val_loss: float) -> Path:
        path = ckpt_dir / name
        if acc.is_main_process:
            save_stage2_checkpoint(path, acc.unwrap_model(model), stats, cfg, progress["epoch"],
                                   progress["global_step"], val_loss, split, base_parts)
        return path

    wandb_run = _wandb(cfg, acc, counts)

    def record(row: dict) -> None:
        if acc.is_main_process:
            with open(metrics_file, "a") as f:
                f.write(json.dumps(row) + "\n")
            if wandb_run is not None:
                wandb_run.log({k: v for k, v in row.items() if "/" in k}, step=progress["global_step"])

    # -- epochs (the loop of vla_lib.train, with the VL encode inside the step) --------------------------------
    history, stop = [], False
    loader = DataLoader(train_set, batch_size=tc.batch_size, sampler=sampler, num_workers=tc.num_workers,
                        collate_fn=collate_frames, drop_last=True, persistent_workers=tc.num_workers > 0,
                        # its own generator: iter() on a loader without one draws from the global RNG, which a
                        # resumed run would then draw at another point than the uninterrupted one (LoRA dropout)
                        generator=torch.Generator().manual_seed(tc.seed))
    while progress["epoch"] < tc.epochs and not stop:
        epoch = progress["epoch"]
        model.train()
        sampler.set_epoch(epoch)
        sampler.load_state_dict({"epoch": epoch, "position": progress["micro"] * tc.batch_size, "seed": tc.seed})
        totals = torch.tensor(progress.pop("totals", [0.0] * 4), device=acc.device)
        window_loss = torch.zeros((), device=acc.device)
        epoch_start = time.perf_counter()
        bar = tqdm(total=steps_per_epoch, initial=progress["micro"] // tc.grad_accum_steps,
                   disable=not acc.is_main_process, desc=f"epoch {epoch + 1}/{tc.epochs}")
        for batch in loader:
            if progress["micro"] >= micro_per_epoch:
                break
            inputs = build_inputs(batch)
            batch = {k: v.to(acc.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            with acc.accumulate(model):
                loss, per_sample, w = stage2_loss(model, inputs, batch, cfg, mean_weight)
                acc.backward(loss)
                grad_norm = acc.clip_grad_norm_(model.parameters(), tc.clip_grad_norm) if acc.sync_gradients else None
                optimizer.step()
                if acc.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
            totals += torch.stack([(per_sample * w).sum().detach(), w.sum(), batch["has_sensor"].sum(),
                                   w.new_full((), float(len(w)))])
            window_loss += loss.detach()
            progress["micro"] += 1
            if grad_norm is None:
                continue
            progress["global_step"] += 1
            bar.update(1)
            if progress["global_step"] % tc.log_every_steps == 0:
                step_loss = float(acc.reduce(window_loss, reduction="mean")) / tc.grad_accum_steps
                seen = acc.reduce(totals.clone(), reduction="sum")
                lr = scheduler.get_last_lr()[0]
                bar.set_postfix_str(f"loss: {step_loss:.6f}, lr: {lr:.2e}, grad: {float(grad_norm):.2f}, "
                                    f"sensor: {int(seen[2])}/{int(seen[3])}")
                record({"step": progress["global_step"], "epoch": epoch + 1, "train/loss_step": step_loss,
                        "train/lr": lr, "train/grad_norm": float(grad_norm),
                        "lr/vl_lr": scheduler.get_last_lr()[-1]})
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
        samples_per_s = float(seen[3]) / (time.perf_counter() - epoch_start)
        train_loss = float(seen[0] / seen[1].clamp(min=1e-9))
        val_loss = evaluate_loss(model, val_set, build_inputs, cfg, acc, mean_weight)
        progress["epoch"], progress["micro"] = epoch + 1, 0
        row = {"epoch": epoch + 1, "step": progress["global_step"], "train/loss_epoch": train_loss,
               "val/loss_epoch": val_loss, "train/sensor_samples": int(seen[2]),
               "train/nonsensor_samples": int(seen[3] - seen[2]), "train/samples_per_s": samples_per_s}
        history.append(row)
        record(row)
        say(f"Epoch {epoch + 1} | Train: {train_loss:.6f} | Val: {val_loss:.6f} | {samples_per_s:.1f} samples/s")
        if val_loss < progress["best_val"]:
            progress["best_val"] = val_loss
            path = save_heads(CHECKPOINT_NAMES["best"], val_loss)
            say(f"[Best] Validation improved → saved to {path}")
        save_heads(CHECKPOINT_NAMES["latest"], val_loss)
        if progress["epoch"] >= tc.epochs:
            save_heads(CHECKPOINT_NAMES["final"], val_loss)
        save_resume(torch.zeros(4, device=acc.device))
        acc.wait_for_everyone()
    equal = _trainable_equal_across_ranks(model, acc)
    if wandb_run is not None:
        wandb_run.finish()
    acc.wait_for_everyone()
    epochs = _epoch_rows(metrics_file) if acc.is_main_process else history
    summary = {"history": epochs, "best_val": progress["best_val"], "global_step": progress["global_step"],
               "epochs_done": progress["epoch"], "finished": progress["epoch"] >= tc.epochs,
               "parameter_counts": counts, "weights_equal_across_ranks": equal, "processes": acc.num_processes,
               "checkpoint_dir": str(ckpt_dir), "split": split, "training_stage": "stage2",
               "vision_cache": str(cache.dir) if cache else None}
    if acc.is_main_process:
        (out / "train_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _trainable_equal_across_ranks(model, acc) -> bool:
    """Stage 1's check over the trainable weights only (the frozen base is never touched, and is billions)."""
    state = acc.unwrap_model(model).trainable_state()
    flat = torch.cat([v.float().flatten() for v in state.values()])
    digest = torch.stack([flat.sum(), (flat * flat).sum(), flat[::97].sum()]).to(acc.device)
    gathered = acc.gather(digest.unsqueeze(0))
    return bool(torch.allclose(gathered, gathered[:1].expand_as(gathered), rtol=0, atol=0))


@torch.no_grad()
def evaluate_loss(model, val_set, build_inputs, cfg, acc, mean_weight: float) -> float:
    """Stage 1's weighted validation loss, the features computed by the adapted LM (eval mode: no LoRA dropout)."""
    if len(val_set) == 0:
        return float("nan")
    model.eval()
    mine = list(range(acc.process_index, len(val_set), acc.num_processes))
    loader = DataLoader(torch.utils.data.Subset(val_set, mine), batch_size=cfg.train.batch_size,
                        collate_fn=collate_frames, num_workers=cfg.train.num_workers,
                        generator=torch.Generator().manual_seed(cfg.train.seed))
    totals = torch.zeros(2, device=acc.device)
    for batch in loader:
        inputs = build_inputs(batch)
        batch = {k: v.to(acc.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        _, per_sample, w = stage2_loss(model, inputs, batch, cfg, mean_weight)
        totals += torch.stack([(per_sample * w).sum(), w.sum()])
    totals = acc.reduce(totals, reduction="sum")
    model.train()
    return float(totals[0] / totals[1].clamp(min=1e-9))
