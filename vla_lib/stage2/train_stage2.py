"""Stage-2 training: LoRA on the VL backbone's language model + the Stage-1 heads, from a Stage-1 checkpoint.
`python -m vla_lib --mode train --training-stage stage2 --finetune-vl lora --stage1-checkpoint PATH` (also under
`accelerate launch` / torchrun), or notebook 03 with a Stage-2 params file; `training.train` picks `Stage2Trainer`.

`Stage2Trainer` is Stage 1's `Trainer` (loop, loss, schedule, exact resume, metrics, wandb names, checkpoint names)
with four steps replaced: `build` (the heads, normalisation statistics and episode split come from the Stage-1
checkpoint; LoRA injected with peft; the frame-level vision cache built), `loss` (each step encodes the views with
gradients through the LM: vision tokens from the cache, or the frozen vision tower), `model_state` (the resume state
holds the heads and the adapter, never the base weights) and `save_heads` (the heads file + the peft adapter).
"""
from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import torch

from vla_lib.config import settings_changed
from vla_lib.data.batches import collate
from vla_lib.data.recorder_files import load_image
from vla_lib.data.samples import SampleDataset, frame_ids
from vla_lib.errors import ConfigError
from vla_lib.models.inputs import PolicyInputs
from vla_lib.policy.adapter import prune_adapters, save_adapter
from vla_lib.policy.checkpoint import feature_mismatch, load_checkpoint, save_checkpoint
from vla_lib.stage2.lora import adapter_state, inject_lora, lora_parameter_count, outside_lm_layers, touches_vision
from vla_lib.stage2.vision_cache import VisionCache, frame_key, vision_parts
from vla_lib.train import Trainer, loss_fn
from vla_lib.train_data import load_data
from vla_lib.train_objective import param_groups
from vla_lib.vlm.cache_build import store_parts
from vla_lib.vlm.feature_store import fingerprint_of
from vla_lib.vlm.interface import load_backbone, require_stage2


# ---------------------------------------------------------------------------------------------------------------
# The model: heads + the LoRA-adapted backbone
# ---------------------------------------------------------------------------------------------------------------
class Stage2Model(torch.nn.Module):
    """`heads` (Stage1Policy) over features the LoRA-adapted LM computes with gradients (the backbone's LM path, a
    `vlm.interface.Stage2Backbone`). Its trainable state is the heads' state dict (`heads.*`) and the adapter's
    tensors (`lora.*`); the frozen base weights are never saved."""

    def __init__(self, heads, backbone, peft_model, gradient_checkpointing: bool = True, layer_fn=None):
        super().__init__()
        self.heads = heads
        self.lm_path = backbone.lm_features  # a bound method: the backbone is no submodule (its model is in `vl`)
        self.vl = peft_model
        self.gradient_checkpointing = gradient_checkpointing
        self.layer_fn = layer_fn  # how each decoder layer is called (None: directly; or `backbone.compiled_layer()`)

    def features(self, plan, image_tokens) -> torch.Tensor:
        return self.lm_path(self.vl, plan, image_tokens, self.gradient_checkpointing and self.training, self.layer_fn)

    def forward(self, x: PolicyInputs, plan, image_tokens) -> torch.Tensor:
        """The heads on `x` with its VL features computed here (inside the forward: DDP syncs the LoRA gradients)."""
        return self.heads(replace(x, vl=self.features(plan, image_tokens), vl_mask=plan.token_mask))

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return self.heads.normalize_actions(actions)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        state = {f"heads.{k}": v.detach().cpu().clone() for k, v in self.heads.state_dict().items()}
        state.update({f"lora.{k}": v.detach().cpu().clone() for k, v in adapter_state(self.vl).items()})
        return state

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        """Loads a `trainable_state` (what the resume state holds): heads and adapter, every key required."""
        from peft import set_peft_model_state_dict

        heads = {k.removeprefix("heads."): v for k, v in state.items() if k.startswith("heads.")}
        lora = {k.removeprefix("lora."): v for k, v in state.items() if k.startswith("lora.")}
        self.heads.load_state_dict(heads, strict=True)
        expected = set(adapter_state(self.vl))
        if strict and set(lora) != expected:  # every adapter tensor, no other
            raise RuntimeError(f"adapter state does not match the model: {sorted(set(lora) ^ expected)[:5]}")
        return set_peft_model_state_dict(self.vl, lora)

    def lora_parameters(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.vl.named_parameters() if "lora_" in n and p.requires_grad]


def stage2_loss(model, inputs: dict, batch: dict, cfg, mean_weight: float, device="cpu"):
    """Stage 1's loss (`train.loss_fn`: loss, per-sample MSE, weight, has-sensor) over the LoRA features."""
    return loss_fn(model, batch, cfg, mean_weight, device, plan=inputs["plan"], image_tokens=inputs["image_tokens"])


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
    """Stage 1's collate (no cached features) + the instructions, view masks and frames the step encodes."""
    out = collate(items)
    out["view_mask"] = torch.as_tensor([list(it["view_mask"]) for it in items], dtype=torch.bool)
    out["instruction"] = [it["instruction"] for it in items]
    out["frames"] = [it["frames"] for it in items]
    # placeholders in the heads' input type, replaced by the adapted LM's features in Stage2Model.forward
    out["vl"], out["vl_mask"] = torch.zeros(len(items), 0, 1), torch.zeros(len(items), 0, dtype=torch.bool)
    return out


def sample_frames(index) -> tuple[list[list[tuple[str, str]]], dict[str, str]]:
    """Per sample the (frame key, path) of each present view in slot order; and every distinct frame key -> path.
    The key is the frame's identity in the Stage-1 cache key (path under the data root, size, mtime)."""
    memo: dict[str, str] = {}
    per_sample = []
    for i in range(len(index)):
        row = []
        for p in index.view_paths(i):
            if p is None:
                continue
            if str(p) not in memo:
                memo[str(p)] = frame_key(frame_ids([Path(p)], index.data_root)[0])
            row.append((memo[str(p)], str(p)))
        per_sample.append(row)
    return per_sample, {k: p for p, k in memo.items()}


class InputBuilder:
    """Turns a collated batch into {"plan": the backbone's plan on the device, "image_tokens": (N, D) on the device}:
    from the vision cache (tokens looked up, the plan from the frames' grids) or from pixels (the backbone's frozen
    vision tower, no gradients). `backbone`: a `vlm.interface.Stage2Backbone`."""

    def __init__(self, backbone, cfg, device, cache=None):
        self.backbone, self.pooling, self.device, self.cache = backbone, cfg.cache.pooling, device, cache
        self._grids: dict[str, tuple] = {}  # a frame's grid from its header, read once

    def grid(self, key: str, path: str) -> tuple:
        if key not in self._grids:
            self._grids[key] = self.backbone.frame_grid(path)
        return self._grids[key]

    def __call__(self, batch: dict) -> dict:
        if "lm_inputs" in batch:  # planned in a loader worker (`PlannedCollate`): only the copy to the device is left
            return self.to_device(batch["lm_inputs"])
        if self.cache is None:
            masks = batch["view_mask"].bool().tolist()
            plan, tokens = self.backbone.plan_from_pixels(
                [([load_image(p) for _, p in frames], instr, m)
                 for instr, m, frames in zip(batch["instruction"], masks, batch["frames"])], self.pooling)
            return {"plan": plan.to(self.device), "image_tokens": tokens}
        return self.to_device(self.on_host(batch))

    def on_host(self, batch: dict) -> dict:
        """The cached path's CPU work (tokenising, the LM plan, the tokens read from the cache), runnable in a loader
        worker: {"plan": the plan on the CPU, "image_tokens": (N, D) on the CPU}."""
        masks = batch["view_mask"].bool().tolist()
        grids = [[self.grid(k, p) for k, p in frames] for frames in batch["frames"]]
        plan = self.backbone.plan(list(zip(batch["instruction"], masks, grids)), self.pooling)
        keys = [k for frames in batch["frames"] for k, _ in frames]
        found = [self.cache.tokens(k) for k in keys]
        for k, t, g in zip(keys, found, [g for sample_grids in grids for g in sample_grids]):
            if t.shape[0] != self.backbone.grid_tokens(g):
                raise RuntimeError(f"vision cache entry {k} holds {t.shape[0]} tokens, the frame's grid gives "
                                   f"{self.backbone.grid_tokens(g)}")
        return {"plan": plan, "image_tokens": torch.cat(found)}

    def to_device(self, inputs: dict) -> dict:
        return {"plan": inputs["plan"].to(self.device),
                "image_tokens": inputs["image_tokens"].to(self.device, non_blocking=True)}


class PlannedCollate:
    """`collate_frames` plus the batch's LM inputs planned on the host (`InputBuilder.on_host`), so the loader's
    workers tokenise, plan and read the vision cache while the GPU runs the previous step (in the main process that
    work stood between steps). The workers are forked: they inherit the builder, and only its CPU parts run there."""

    def __init__(self, builder: InputBuilder):
        self.builder = builder

    def __call__(self, items: list[dict]) -> dict:
        batch = collate_frames(items)
        batch["lm_inputs"] = self.builder.on_host(batch)
        return batch


def use_vision_cache(cfg, backbone) -> bool:
    """lora.vision_cache: auto/on = the frozen vision tower's tokens from the cache; off = the vision tower (without
    gradients) every step. Targets outside the LM's decoder layers are refused: the vision tower runs without
    gradients in Stage 2 (cached tokens of a vision tower being trained would be stale, and its LoRA would never
    learn), and no other module runs at all."""
    touched = touches_vision(backbone.model, cfg.lora, backbone.vision_scope)
    if touched and cfg.lora.vision_cache == "on":
        raise ConfigError(f"lora.vision_cache: on, but lora.targets {cfg.lora.targets} adapt the vision tower "
                          f"({touched[:3]} ...): its tokens change during training and cannot be cached")
    outside = outside_lm_layers(backbone.model, cfg.lora, backbone.lm_layer_scope)
    if outside:
        raise ConfigError(f"lora.targets {cfg.lora.targets} reach modules outside the language model's decoder "
                          f"layers ({outside[:3]} ...): Stage 2 trains LoRA on those layers only (the vision tower "
                          "runs frozen); Qwen2.5-VL's LM attention is q_proj, k_proj, v_proj, o_proj (its vision "
                          "blocks' MLP shares the names gate_proj, up_proj, down_proj)")
    return cfg.lora.vision_cache != "off"


# ---------------------------------------------------------------------------------------------------------------
# Stage-1 start, checkpoints
# ---------------------------------------------------------------------------------------------------------------
def load_stage1(cfg, backbone_parts: dict):
    """The Stage-1 checkpoint named by train.stage1_checkpoint: its heads, stats, split; refused when its heads were
    trained on other features (backbone, budget, pooling, views, ...) or with another model section."""
    path = cfg.train.stage1_checkpoint
    if not path:
        raise ConfigError("Stage 2 starts from Stage-1 heads: set --stage1-checkpoint PATH (train.stage1_checkpoint)")
    if not Path(path).exists():
        raise ConfigError(f"train.stage1_checkpoint: {path} does not exist (train Stage 1 first: --mode train "
                          "--training-stage stage1)")
    ckpt = load_checkpoint(path)
    if ckpt.stage != "stage1":
        raise ConfigError(f"{path} is a Stage-2 checkpoint: Stage 2 starts from Stage-1 heads")
    # where Stage 1 prepared its images (CPU, or the device's decoder and resize) differs by rounding only: Stage 2
    # starts from heads of either and trains on CPU-prepared pixels
    differs = [d for d in feature_mismatch(ckpt.features.get("parts", {}), store_parts(cfg, backbone_parts))
               if not d.startswith("image_prep:")] if ckpt.features else []
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


def setup(cfg, device, say=print):
    """Everything model-side before the loop, shared by training, the tests and the benchmark: (model, backbone,
    Stage-1 checkpoint, base feature parts, vision cache or None). The backbone is reached only through
    `vlm.interface` (`Stage2Backbone`): a kind without it is refused here, in one line."""
    # a plain module for peft (the backbone's own LM path); images prepared on the CPU (the vision cache's tokens,
    # and what the checkpoint records: VLAPolicy prepares a Stage-2 policy's images the same way)
    bcfg = replace(cfg.backbone, device=str(device), fast_vision="off", image_prep="cpu")
    backbone = load_backbone(bcfg)
    require_stage2(backbone, cfg.backbone.kind)
    base_parts = store_parts(cfg, backbone.parts())
    ckpt = load_stage1(cfg, backbone.parts())
    cache = VisionCache(cfg.cache.dir, vision_parts(cfg, backbone.parts())) if use_vision_cache(cfg, backbone) else None
    peft_model = inject_lora(backbone.model, cfg.lora)
    say(f"LoRA r={cfg.lora.r} alpha={cfg.lora.alpha:g} dropout={cfg.lora.dropout:g} on {list(cfg.lora.targets)}: "
        f"{lora_parameter_count(peft_model):,} parameters; vision cache "
        + (f"on ({cache.dir})" if cache else "off (vision tower every step)")
        + f"; gradient checkpointing {'on' if cfg.lora.gradient_checkpointing else 'off'}")
    compiled = cfg.lora.compile_layers == "on" or (cfg.lora.compile_layers == "auto" and
                                                    torch.device(device).type == "cuda")
    model = Stage2Model(ckpt.heads.train(), backbone, peft_model, cfg.lora.gradient_checkpointing,
                        backbone.compiled_layer() if compiled else None).to(device)
    return model, backbone, ckpt, base_parts, cache


# ---------------------------------------------------------------------------------------------------------------
class Stage2Trainer(Trainer):
    collate = staticmethod(collate_frames)
    val_batch_min = 1  # every validation sample runs the LM: the training batch size bounds memory

    def build(self):
        """(Stage2Model, parameter groups with LoRA's own, train dataset, val dataset, train index)."""
        cfg, tc, acc = self.cfg, self.cfg.train, self.acc
        self.say(f"  Stage 2 (LoRA + heads) from {tc.stage1_checkpoint}; VL (LoRA) lr {tc.vl_lr:g}")
        model, backbone, stage1, self.base_parts, cache = setup(cfg, acc.device, self.say)
        # the Stage-1 checkpoint's split and statistics (or, resuming, the run's own: the same ones)
        start = self.resume or {"split": stage1.split, "stats": asdict(stage1.stats)}
        train_index, val_index, self.split, self.stats = load_data(cfg, self.say, acc.is_main_process, start)
        train_frames, frames = sample_frames(train_index)
        val_frames, more = sample_frames(val_index)
        frames.update(more)
        if cache is not None:
            done = cache.build(backbone, frames, acc.process_index, acc.num_processes, log=lambda *a: None)
            acc.wait_for_everyone()
            cache.store.refresh()
            if acc.is_main_process:
                cache.store.merge_index()
            self.say(f"Vision cache: {len(frames)} distinct frames, {done} encoded now on this rank ({cache.dir})")
        if tc.compile:
            self.say("train.compile applies to Stage 1's heads; Stage 2 runs them uncompiled")
        self.counts = {**model.heads.parameter_counts(), "lora": sum(p.numel() for p in model.lora_parameters())}
        self.counts["total_trainable"] += self.counts["lora"]
        self.say(f"Trainable: LoRA {self.counts['lora']:,}, Action Expert {self.counts['action_expert']:,}, Sensor "
                 f"Encoder {self.counts['sensor_encoder']:,}; frozen: the backbone's base weights")
        groups = param_groups(model.heads, tc) + [{"params": model.lora_parameters(), "lr": tc.vl_lr,
                                                    "weight_decay": tc.weight_decay, "name": "vl_lora"}]
        self.build_inputs = InputBuilder(backbone, cfg, acc.device, cache)
        if cache is not None:  # the cached path's host work moves into the loader (its workers, when there are any)
            self.collate = PlannedCollate(self.build_inputs)
        self.vision_cache = cache
        return (model, groups, FrameSamples(SampleDataset(train_index, cfg.data, self.augmentation), train_frames),
                FrameSamples(SampleDataset(val_index, cfg.data), val_frames), train_index)

    def loss(self, batch: dict) -> tuple[torch.Tensor, ...]:
        return stage2_loss(self.model, self.build_inputs(batch), batch, self.cfg, self.mean_weight, self.acc.device)

    def model_state(self) -> dict[str, torch.Tensor]:
        return self.acc.unwrap_model(self.model).trainable_state()

    def save_heads(self, name: str, val_loss: float) -> Path:
        """The adapter in peft's format in `<name>.adapter-<sha>/`, then the heads file (Stage 1's format, naming that
        sha: the commit point), then the adapter folders no heads file names are removed."""
        self.guard.check(f"{name} was not written")
        path = self.ckpt_dir / name
        if self.acc.is_main_process:
            model = self.acc.unwrap_model(self.model)
            sha = save_adapter(model.vl, path)
            parts = stage2_parts(self.base_parts, self.cfg.lora, sha)
            save_checkpoint(path, model.heads, self.stats, self.cfg, self.progress["epoch"],
                            self.progress["global_step"], val_loss, self.split,
                            {"fingerprint": fingerprint_of(parts), "parts": parts}, stage="stage2")
            prune_adapters(path, sha)
        return path
