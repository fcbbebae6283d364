"""Stage-1 training with accelerate: the VL backbone frozen (features from the cache), SensorEncoder + Action Expert
trained. `vla_lib.training.train` runs it (`python -m vla_lib --mode train`, `accelerate launch -m vla_lib --mode
train`, or under torchrun); `Trainer` holds the run's state and its steps.

The loop, in order: data (samples, episode split, stats) -> cached VL features -> model -> optimiser/scheduler ->
auto-resume -> epochs of (train with gradient accumulation, validate, checkpoint). Exact resume: the resume state
holds weights, optimiser, scheduler, sampler position, every rank's RNG, best-so-far; a killed run started again
with the same command ends with the same weights as an uninterrupted one (CPU, deterministic).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vla_lib.data.augment import training_augmentation
from vla_lib.data.batches import FeatureJoinedDataset, collate
from vla_lib.data.samples import SampleDataset
from vla_lib.jsonio import json_safe, write_json
from vla_lib.finite_guard import FiniteGuard, NonFiniteError
from vla_lib.policy.checkpoint import CHECKPOINT_NAMES, atomic_save, save_checkpoint
from vla_lib.models.inputs import inputs_from_batch
from vla_lib.train_data import build_model, load_data, load_features, make_loader, make_sampler
from vla_lib.train_objective import lr_lambda, masked_mse, param_groups, sample_weights
from vla_lib.train_state import (RESUME_FORMAT, epoch_rows, load_resume, read_resume, rng_state, seed_everything,
                                 trim_metrics)


# ---------------------------------------------------------------------------------------------------------------
# The loss of a batch: here, not with its pieces in train_objective, because the Trainer looks it up in this
# module at each call (a replaced `vla_lib.train.loss_fn` is the one Stage 1 trains with).
# ---------------------------------------------------------------------------------------------------------------
def loss_fn(model, batch: dict, cfg, mean_weight: float, device, **model_inputs) -> tuple[torch.Tensor, ...]:
    """(loss, per-sample MSE, per-sample weight, has-sensor) of a collated batch: the one loss of training and
    validation, of both stages (`model_inputs`: what Stage 2's model needs besides the heads' inputs)."""
    x = inputs_from_batch(batch, device)
    target = _unwrap(model).normalize_actions(batch["target"].to(device, non_blocking=True))
    per_sample = masked_mse(model(x, **model_inputs).float(), target,
                            batch["target_mask"].to(device, non_blocking=True))
    w = sample_weights(x.has_sensor, cfg.train)
    return (per_sample * w).mean() / mean_weight, per_sample, w, x.has_sensor


def _unwrap(model):
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)


class Trainer:
    """The state of one training run and its steps; `training.train` is the readable sequence of them. Stage 2
    (`stage2.train_stage2.Stage2Trainer`) replaces `build`, `loss`, `model_state` and `save_heads`."""

    collate = staticmethod(collate)  # a batch of the datasets `build` returns
    val_batch_min = 32  # validation batches of at least this many samples (the heads alone are small)

    def __init__(self, cfg, log=print):
        cfg.validate()  # also catches a config changed in code after it was built
        self.cfg, tc = cfg, cfg.train
        self.on_cuda = torch.cuda.is_available()
        mp = ("bf16" if self.on_cuda else "no") if tc.mixed_precision == "auto" else tc.mixed_precision
        # cpu=True on a machine without CUDA: under torchrun / accelerate launch that gives MULTI_CPU over gloo.
        self.acc = Accelerator(mixed_precision=mp, gradient_accumulation_steps=tc.grad_accum_steps,
                               cpu=not self.on_cuda)
        self.say = log if self.acc.is_main_process else (lambda *a, **k: None)
        seed_everything(tc.seed)
        self.out = Path(tc.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.resume_file = self.ckpt_dir / "resume_state.pt"
        self.metrics_file = self.out / "metrics.jsonl"
        self.say(f"Running in TRAIN mode on {self.acc.num_processes} process(es) ({self.acc.device}, mixed "
                 f"precision {mp}); run folder {self.out}")
        self.say(f"  fusion: {cfg.model.fusion}, lr {tc.lr:g}, sensor lr {tc.sensor_lr:g}, sensor loss weight "
                 f"{tc.sensor_loss_weight:g}, batch {tc.batch_size} x accum {tc.grad_accum_steps} x "
                 f"{self.acc.num_processes} proc")
        self.resume = read_resume(self.resume_file, cfg, self.acc.num_processes, self.say)
        self.augmentation = training_augmentation(cfg)  # the training split's sensor windows (None: off)
        if self.augmentation is not None:
            self.say("  sensor augmentation of the training samples on (augment section; each sample's drawn from "
                     "train.seed, epoch and sample index)")
        self.wandb_run = None
        self.stopped = False  # train.max_steps reached

    # -- a finished run is never rewritten -------------------------------------------------------------------
    def finished_already(self) -> bool:
        if self.resume is None or self.resume["progress"]["epoch"] < self.cfg.train.epochs:
            return False
        p = self.resume["progress"]
        self.say(f"{self.out} is a finished run ({p['epoch']} epochs, best val {p['best_val']:.6f}): nothing to train, "
                 "nothing rewritten. Start a new run with --run-name NAME (with more --epochs to train longer)")
        return True

    def existing_summary(self) -> dict:
        path = self.out / "train_summary.json"
        return json.loads(path.read_text()) if path.exists() else {"finished": True}

    # -- data, model, optimiser ------------------------------------------------------------------------------
    def setup(self) -> None:
        """The stage's model, datasets and parameter groups (`build`), then what both stages share: optimiser,
        sampler, schedule, accelerate and the loader."""
        tc, acc = self.cfg.train, self.acc
        model, groups, train_set, self.val_set, train_index = self.build()
        # fused AdamW on CUDA: one kernel for all parameters (the step is a visible share of a 28 ms batch-64 step)
        optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8, fused=self.on_cuda or None)
        self.sampler = make_sampler(train_index, acc, tc)
        self.micro_per_epoch = (self.sampler.per_rank // tc.batch_size) // tc.grad_accum_steps * tc.grad_accum_steps
        self.steps_per_epoch = self.micro_per_epoch // tc.grad_accum_steps
        if self.steps_per_epoch == 0:
            raise ValueError(f"{self.sampler.per_rank} samples per rank are fewer than one optimiser step "
                             f"(batch {tc.batch_size} x accum {tc.grad_accum_steps})")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(self.steps_per_epoch * tc.epochs, tc))
        self.model, self.optimizer = acc.prepare(model, optimizer)  # one prepare; our sampler already splits ranks
        # Gradients live in tensors of their own, zeroed in place each step (never set to None): otherwise autograd
        # adopts the first micro-batch's gradients from the backward graph's output memory, which a compiled model
        # with CUDA graphs (compile_mode reduce-overhead) overwrites at the next micro-batch, so gradient
        # accumulation crashed ("accessing tensor output of CUDAGraphs that has been overwritten").
        for p in self.model.parameters():
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)
        self.guard = FiniteGuard(acc.device)
        self.mean_weight = float(np.mean(np.where(train_index.table.has_sensor, tc.sensor_loss_weight,
                                                  tc.nonsensor_confidence)))
        self.loader = make_loader(train_set, self.sampler, tc, self.collate, pin_memory=self.on_cuda)
        self.history: list[dict] = []

    def build(self):
        """Stage 1: (heads, parameter groups, train dataset, val dataset, train index) on the cached features."""
        cfg, tc, acc = self.cfg, self.cfg.train, self.acc
        train_index, val_index, self.split, self.stats = load_data(cfg, self.say, acc.is_main_process, self.resume)
        train_features, val_features, store = load_features(cfg, train_index, val_index, self.say)
        self.features_info = {"fingerprint": store.fingerprint, "parts": store.parts}
        # the initial weights from train.seed alone: an inline cache build just before draws random numbers (it
        # loads the VL model), and a sweep's first member, which builds the cache, trained other weights than a rerun
        seed_everything(tc.seed)
        model = build_model(cfg, self.stats, train_features.features.shape[-1])
        self.counts = model.parameter_counts()
        self.say(f"Trainable: Action Expert {self.counts['action_expert']:,}, Sensor Encoder "
                 f"{self.counts['sensor_encoder']:,} (+{self.counts['null_sensor']:,} null embedding), total "
                 f"{self.counts['total_trainable']:,}; frozen (VL backbone, cached): not loaded")
        if tc.compile:  # in place: fewer kernel launches per step, same parameter names in checkpoints
            model.compile(mode=tc.compile_mode)
            self.say(f"Heads compiled in place (torch.compile, mode {tc.compile_mode}); the first steps include "
                     "compilation")
        return (model, param_groups(model, tc),
                FeatureJoinedDataset(SampleDataset(train_index, cfg.data, self.augmentation), train_features),
                FeatureJoinedDataset(SampleDataset(val_index, cfg.data), val_features), train_index)

    def loss(self, batch: dict) -> tuple[torch.Tensor, ...]:
        """(loss, per-sample MSE, per-sample weight, has-sensor) of a collated batch."""
        return loss_fn(self.model, batch, self.cfg, self.mean_weight, self.acc.device)

    def model_state(self) -> dict[str, torch.Tensor]:
        """What the resume state holds of the model (loaded back by its `load_state_dict`)."""
        return self.acc.unwrap_model(self.model).state_dict()

    # -- resume ----------------------------------------------------------------------------------------------
    def resume_or_start(self) -> None:
        if self.resume is not None:
            self.progress = load_resume(self.resume, self.model, self.optimizer, self.scheduler, self.acc)
            p = self.progress
            self.say(f"Resumed from {self.resume_file}: epoch {p['epoch'] + 1}, micro-batch {p['micro']}, "
                     f"step {p['global_step']}, best val {p['best_val']:.6f}")
            if self.acc.is_main_process:
                trim_metrics(self.metrics_file, p)
        else:
            self.progress = {"epoch": 0, "micro": 0, "global_step": 0, "best_val": float("inf"), "totals": [0.0] * 4}
            if self.acc.is_main_process and self.metrics_file.exists():
                self.metrics_file.unlink()  # a fresh run: no rows of an earlier, unsaved attempt
        self.guard.first_step = self.progress["global_step"] + 1
        self.wandb_run = _wandb(self.cfg, self.acc, self.counts)

    # -- one epoch -------------------------------------------------------------------------------------------
    def train_epoch(self) -> bool:
        """Train to the end of the epoch (True), or until train.max_steps stops the run mid-epoch (False)."""
        tc, acc, progress = self.cfg.train, self.acc, self.progress
        epoch = progress["epoch"]
        self.model.train()
        self.sampler.set_epoch(epoch)
        if self.augmentation is not None:  # before iter(): the workers read it for this epoch's samples
            self.augmentation.set_epoch(epoch)
        self.sampler.load_state_dict({"epoch": epoch, "position": progress["micro"] * tc.batch_size, "seed": tc.seed})
        # weighted loss sum, weight sum, sensor samples, samples: restored on resume, so the epoch's loss is exact
        self.totals = torch.tensor(progress.pop("totals", [0.0] * 4), device=acc.device)
        window_loss = torch.zeros((), device=acc.device)  # the micro-batch losses of this optimiser step
        self.epoch_start = time.perf_counter()
        bar = tqdm(total=self.steps_per_epoch, initial=progress["micro"] // tc.grad_accum_steps,
                   disable=not acc.is_main_process, desc=f"epoch {epoch + 1}/{tc.epochs}")
        for batch in self.loader:
            if progress["micro"] >= self.micro_per_epoch:
                break
            with acc.accumulate(self.model):
                loss, per_sample, w, has = self.loss(batch)
                acc.backward(loss)
                grad_norm = acc.clip_grad_norm_(self.model.parameters(), tc.clip_grad_norm) \
                    if acc.sync_gradients else None
                self.optimizer.step()
                if acc.sync_gradients:
                    self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=False)
            self.totals += torch.stack([(per_sample * w).sum().detach(), w.sum(), has.sum(),
                                        w.new_full((), float(len(w)))])  # built on the device: no host copy
            window_loss += loss.detach()
            progress["micro"] += 1
            if grad_norm is None:
                continue
            # an optimiser step was taken: its loss is the mean over the window's micro-batches and the ranks
            progress["global_step"] += 1
            self.guard.update(window_loss, grad_norm)
            bar.update(1)
            if progress["global_step"] % tc.log_every_steps == 0:
                self.guard.check("at the log of this step")
                # reading loss/grad back is a host sync: every log_every_steps steps, not every step
                step_loss = float(acc.reduce(window_loss, reduction="mean")) / tc.grad_accum_steps
                seen = acc.reduce(self.totals.clone(), reduction="sum")
                lr = self.scheduler.get_last_lr()[0]
                bar.set_postfix_str(f"loss: {step_loss:.6f}, lr: {lr:.2e}, grad: {float(grad_norm):.2f}, "
                                    f"sensor: {int(seen[2])}/{int(seen[3])}")
                self.record({"step": progress["global_step"], "epoch": epoch + 1, "train/loss_step": step_loss,
                             "train/lr": lr, "train/grad_norm": float(grad_norm)})
            window_loss.zero_()
            if tc.save_every_steps and progress["global_step"] % tc.save_every_steps == 0:
                self.save_resume(self.totals)
            if tc.max_steps and progress["global_step"] >= tc.max_steps:
                self.stopped = True
                break
        bar.close()
        if self.stopped and progress["micro"] < self.micro_per_epoch:
            self.save_resume(self.totals)
            return False
        return True  # (a limit on the epoch's last step still validates and checkpoints it)

    # -- validation, checkpoints -----------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> float:
        """Weighted validation loss in eval mode (the training loss), each rank a disjoint part, reduced across
        processes."""
        self.model.eval()
        acc = self.acc
        mine = list(range(acc.process_index, len(self.val_set), acc.num_processes))
        loader = DataLoader(torch.utils.data.Subset(self.val_set, mine),
                            batch_size=max(self.cfg.train.batch_size, self.val_batch_min),
                            collate_fn=self.collate, num_workers=self.cfg.train.num_workers)
        totals = torch.zeros(2, device=acc.device)
        for batch in loader:
            _, per_sample, w, _ = self.loss(batch)
            totals += torch.stack([(per_sample * w).sum(), w.sum()])
        totals = acc.reduce(totals, reduction="sum")
        self.model.train()
        return float(totals[0] / totals[1].clamp(min=1e-9))

    def end_epoch(self, val_loss: float) -> None:
        tc, progress = self.cfg.train, self.progress
        seen = self.acc.reduce(self.totals, reduction="sum")
        samples_per_s = float(seen[3]) / (time.perf_counter() - self.epoch_start)  # all ranks, loading included
        train_loss = float(seen[0] / seen[1].clamp(min=1e-9))
        epoch = progress["epoch"] + 1
        progress["epoch"], progress["micro"] = epoch, 0
        row = {"epoch": epoch, "step": progress["global_step"], "train/loss_epoch": train_loss,
               "val/loss_epoch": val_loss, "train/sensor_samples": int(seen[2]),
               "train/nonsensor_samples": int(seen[3] - seen[2]), "train/samples_per_s": samples_per_s}
        self.history.append(row)
        self.record(row)
        self.say(f"Epoch {epoch} | Train: {train_loss:.6f} | Val: {val_loss:.6f} | {samples_per_s:.0f} samples/s")
        self.guard.check(f"epoch {epoch}'s checkpoints were not written")
        if not math.isfinite(val_loss):
            raise NonFiniteError(f"epoch {epoch}: the validation loss was {val_loss} with finite training steps (the "
                                 "model in eval mode gives non-finite outputs); its checkpoints were not written")
        if val_loss < progress["best_val"]:
            progress["best_val"] = val_loss
            self.say(f"[Best] Validation improved → saved to {self.save_heads(CHECKPOINT_NAMES['best'], val_loss)}")
        self.save_heads(CHECKPOINT_NAMES["latest"], val_loss)
        if epoch >= tc.epochs:
            self.save_heads(CHECKPOINT_NAMES["final"], val_loss)
        self.save_resume(torch.zeros(4, device=self.acc.device))
        self.acc.wait_for_everyone()

    def save_resume(self, totals: torch.Tensor) -> None:
        """Everything an exact restart needs: weights, optimiser, schedule, progress, run config, and per rank its RNG
        states and running epoch sums (tensors and plain values: loadable with weights_only=True)."""
        acc = self.acc
        self.guard.check("the resume state was not written")
        mine = {"rng": rng_state(), "totals": totals.tolist()}
        ranks = acc.gather_for_metrics([mine], use_gather_object=True) if acc.num_processes > 1 else [mine]
        if acc.is_main_process:
            state = {k: v for k, v in self.progress.items() if k != "totals"}
            atomic_save({"format": RESUME_FORMAT, "model": self.model_state(),
                         "optimizer": self.optimizer.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                         "progress": state, "ranks": ranks, "run_config": self.cfg.to_dict(), "split": self.split,
                         "stats": asdict(self.stats), "processes": acc.num_processes}, self.resume_file)

    def save_heads(self, name: str, val_loss: float) -> Path:
        self.guard.check(f"{name} was not written")
        path = self.ckpt_dir / name
        if self.acc.is_main_process:
            save_checkpoint(path, self.acc.unwrap_model(self.model), self.stats, self.cfg, self.progress["epoch"],
                            self.progress["global_step"], val_loss, self.split, self.features_info)
        return path

    def record(self, row: dict) -> None:
        """One row of metrics.jsonl (and wandb), main process only."""
        if self.acc.is_main_process:
            with open(self.metrics_file, "a") as f:
                f.write(json.dumps(json_safe(row)) + "\n")  # strict JSON: a non-finite value is null
            if self.wandb_run is not None:
                self.wandb_run.log({k: v for k, v in row.items() if "/" in k}, step=self.progress["global_step"])

    # -- the end ---------------------------------------------------------------------------------------------
    def finish(self) -> dict:
        acc, progress = self.acc, self.progress
        equal = _weights_equal_across_ranks(self.model, acc)
        if self.wandb_run is not None:
            self.wandb_run.finish()
        acc.wait_for_everyone()
        summary = {"history": epoch_rows(self.metrics_file) if acc.is_main_process else self.history,
                   "best_val": progress["best_val"], "global_step": progress["global_step"],
                   "epochs_done": progress["epoch"], "finished": progress["epoch"] >= self.cfg.train.epochs,
                   "parameter_counts": self.counts, "weights_equal_across_ranks": equal,
                   "processes": acc.num_processes, "checkpoint_dir": str(self.ckpt_dir), "split": self.split,
                   "training_stage": self.cfg.train.training_stage}
        if acc.is_main_process:
            write_json(self.out / "train_summary.json", summary)  # atomic; best_val before any validation: null
        return summary


def _weights_equal_across_ranks(model, acc) -> bool:
    """The trained weights (those with gradients: never a frozen backbone's billions) agree across ranks."""
    flat = torch.cat([p.detach().float().flatten() for p in acc.unwrap_model(model).parameters() if p.requires_grad])
    digest = torch.stack([flat.sum(), (flat * flat).sum(), flat[::97].sum()]).to(acc.device)
    gathered = acc.gather(digest.unsqueeze(0))
    return bool(torch.allclose(gathered, gathered[:1].expand_as(gathered), rtol=0, atol=0))


def _wandb(cfg, acc, counts):
    if not acc.is_main_process or cfg.train.wandb_mode == "disabled" or os.environ.get("WANDB_MODE") == "disabled":
        return None
    try:
        import wandb  # optional: a run without it logs to metrics.jsonl only
    except ImportError:
        return None
    return wandb.init(project=cfg.train.wandb_project, name=cfg.run_name, mode=cfg.train.wandb_mode,
                      dir=cfg.train.output_dir, config={**cfg.to_dict(), "parameter_counts": counts})
