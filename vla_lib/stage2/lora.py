"""LoRA on the VL backbone with peft: configuration, injection, the parameter count, the adapter's identity.

The defaults are the original's (original_system.md §6): r 16, alpha 32, dropout 0.05 on `q_proj, k_proj, v_proj,
o_proj`. peft matches target names as module-name suffixes; Qwen2.5-VL's vision blocks call their projections `qkv`
and `proj`, so these targets touch only the language model and the vision tower stays frozen (which is what lets
Stage 2 cache its output per frame, see `vision_cache`).

Only the adapter is ever saved (peft's `save_pretrained`: `adapter_config.json` + `adapter_model.safetensors`), never
the base weights; its SHA-1 over the saved tensors is its identity in the checkpoint's feature parts.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
import warnings
from pathlib import Path

import torch

ADAPTER_SUFFIX = ".adapter-"  # qwen_vla_sensor_best.pt -> qwen_vla_sensor_best.adapter-<sha>/


def peft_config(lcfg):
    """A peft LoraConfig from the run's `lora` section (vla_lib.config.LoraConfig)."""
    from peft import LoraConfig

    return LoraConfig(r=int(lcfg.r), lora_alpha=float(lcfg.alpha), lora_dropout=float(lcfg.dropout),
                      target_modules=list(lcfg.targets), bias="none")


def matched_modules(model, lcfg) -> list[str]:
    """Names of the modules peft would adapt (its own matching rule), without injecting anything."""
    from peft.tuners.tuners_utils import check_target_module_exists

    config = peft_config(lcfg)
    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and check_target_module_exists(config, name)]


def touches_vision(model, lcfg, vision_scope: str) -> list[str]:
    """The targeted modules inside the vision tower (empty: the vision tower stays frozen). `vision_scope`: the
    backbone's fragment of its vision modules' dotted names (`Stage2Backbone.vision_scope`)."""
    return [n for n in matched_modules(model, lcfg) if vision_scope in f".{n}"]


def outside_lm_layers(model, lcfg, lm_layer_scope: str) -> list[str]:
    """Targeted modules outside the language model's decoder layers (the vision tower, lm_head, ...): Stage 2 runs
    only those layers with gradients, so LoRA anywhere else would be counted, saved and never trained.
    `lm_layer_scope`: the backbone's fragment of those layers' dotted names (`Stage2Backbone.lm_layer_scope`)."""
    return [n for n in matched_modules(model, lcfg) if lm_layer_scope not in f".{n}"]


def inject_lora(model, lcfg):
    """Inject LoRA into `model` in place (a backbone's `model`) and return the peft model that wraps it. Only the
    LoRA matrices require gradients; every base weight stays frozen."""
    from peft import get_peft_model

    if not matched_modules(model, lcfg):
        from vla_lib.errors import ConfigError

        raise ConfigError(f"lora.targets {list(lcfg.targets)} match no linear module of the backbone")
    model.requires_grad_(False)
    with _quiet_peft():
        peft_model = get_peft_model(model, peft_config(lcfg))
    for name, p in peft_model.named_parameters():
        p.requires_grad_("lora_" in name)
    return peft_model


def lora_parameter_count(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


def count_for_config(config, lcfg) -> int:
    """LoRA parameters for a model config, on the meta device (no weights allocated): e.g. the 3B architecture."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config)
        return lora_parameter_count(inject_lora(model, lcfg))


def adapter_state(peft_model) -> dict[str, torch.Tensor]:
    """The adapter's tensors as peft saves them (names without the adapter name)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(peft_model)


def adapter_sha(state: dict[str, torch.Tensor]) -> str:
    """Identity of an adapter: SHA-1 over its tensors' names, shapes, dtypes and bytes."""
    h = hashlib.sha1()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def saved_adapter_sha(folder: str | Path) -> str:
    """The identity of an adapter folder written by `save_adapter` (the same tensors as `adapter_sha`)."""
    from safetensors.torch import load_file

    return adapter_sha(load_file(str(Path(folder) / "adapter_model.safetensors")))


def adapter_dir_for(checkpoint: str | Path, sha: str) -> Path:
    """The adapter folder of a checkpoint, named by the adapter's identity (which the heads file records)."""
    path = Path(checkpoint)
    return path.with_name(path.stem + ADAPTER_SUFFIX + sha)


def save_adapter(peft_model, checkpoint: str | Path) -> str:
    """peft's `save_pretrained` into `<checkpoint stem>.adapter-<sha>/` (written whole under a temporary name, then
    renamed); returns the sha. A new adapter never replaces the folder the current heads file names: the heads file,
    written after it, is the one commit point (a crash in between leaves the old pair intact), and
    `prune_adapters` then removes the folders no heads file names."""
    path = Path(checkpoint)
    tmp = path.with_name(f".{path.stem}.adapter.{uuid.uuid4().hex[:8]}.tmp")
    peft_model.save_pretrained(str(tmp), safe_serialization=True)
    sha = saved_adapter_sha(tmp)
    folder = adapter_dir_for(path, sha)
    if folder.exists():  # the same tensors saved before (e.g. best and latest of one epoch share nothing: per stem)
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, folder)
    return sha


def prune_adapters(checkpoint: str | Path, keep_sha: str) -> None:
    """Remove this checkpoint's adapter folders other than the one its heads file names."""
    path = Path(checkpoint)
    for folder in path.parent.glob(path.stem + ADAPTER_SUFFIX + "*"):
        if folder.name != adapter_dir_for(path, keep_sha).name:
            shutil.rmtree(folder, ignore_errors=True)


def load_adapter(model, folder: str | Path, merge: bool = False):
    """Apply a saved adapter to a base model (in place). `merge=True` folds it into the base weights and returns the
    plain model (inference: no extra LoRA matmuls, the fast encoder and CUDA graphs apply as for Stage 1); else the
    peft model."""
    from peft import PeftModel

    with _quiet_peft():
        peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    return peft_model.merge_and_unload() if merge else peft_model


@contextlib.contextmanager
def _quiet_peft():
    """peft's PeftModel reads transformers' deprecated `is_gradient_checkpointing` (transformers 5.x warns on every
    wrap): a FutureWarning about peft's code, not ours, that would land in every executed Stage-2 notebook."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield
