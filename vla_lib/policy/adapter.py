"""The adapter half of a Stage-2 checkpoint: the heads file (`policy.checkpoint`, stage "stage2") names the peft
adapter folder beside it (`<name>.adapter-<sha>/`, peft's `save_pretrained`: `adapter_config.json` +
`adapter_model.safetensors`, never the base weights). Saving, pruning and applying it to a backbone live here.

A Stage-2 checkpoint's feature parts carry the adapter's identity (`adapter`: SHA-1 of its tensors, `lora`: r,
alpha, targets). The live parts of a backbone with that adapter loaded carry the same, so they match; a Stage-1
feature store has none, so its fingerprint never matches and it is never used for a Stage-2 policy."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path

import torch

from vla_lib.policy.checkpoint import CheckpointMismatchError

ADAPTER_SUFFIX = ".adapter-"  # qwen_vla_sensor_best.pt -> qwen_vla_sensor_best.adapter-<sha>/


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

    with quiet_peft():
        peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    return peft_model.merge_and_unload() if merge else peft_model


@contextlib.contextmanager
def quiet_peft():
    """peft's PeftModel reads transformers' deprecated `is_gradient_checkpointing` (transformers 5.x warns on every
    wrap): a FutureWarning about peft's code, not ours, that would land in every executed Stage-2 notebook."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def apply_adapter(backbone, checkpoint: str | Path, sha: str, merge: bool | None = None) -> dict:
    """Load the adapter folder `<checkpoint stem>.adapter-<sha>/` onto `backbone.model` (a Stage2Backbone: its
    `set_model` rebuilds what the backbone made around the model); returns its live parts
    ({"adapter": the sha of the tensors found there, "lora"}). `merge` (default: in fp32 only) folds it into the base
    weights (no LoRA matmuls at inference); in bf16/fp16 the sum W + s·BA would be rounded to the base dtype, losing
    small updates, so the LoRA layers stay unmerged, as in training."""
    folder = adapter_dir_for(checkpoint, sha)
    if not (folder / "adapter_model.safetensors").exists():
        raise CheckpointMismatchError(f"{checkpoint}: a Stage-2 checkpoint without its adapter folder {folder}")
    conf = json.loads((folder / "adapter_config.json").read_text())
    parts = {"adapter": saved_adapter_sha(folder), "lora": {"r": int(conf["r"]), "alpha": float(conf["lora_alpha"]),
                                                            "targets": sorted(conf["target_modules"])}}
    merge = backbone.dtype == torch.float32 if merge is None else merge
    adapted = load_adapter(backbone.model, folder, merge=merge)
    backbone.set_model(adapted if merge else adapted.get_base_model())  # unmerged: LoRA layers inside the model
    return parts
