"""Checkpoint format of the trainable heads (never the frozen VLM): weights, policy config, run config, stats.

Files: `qwen_vla_sensor.pt` (latest, every epoch), `qwen_vla_sensor_best.pt`,
`qwen_vla_sensor_final.pt`. Plain tensors and Python values only, so `torch.load(weights_only=True)` reads them.
Writes are atomic (temporary file + rename). Each also records what the numbers depend on: the episode split
(training and validation session ids: evaluation uses exactly these) and the feature store's fingerprint and parts
(backbone, pixel budget, dtype, ...: inference refuses another backbone unless told otherwise), and which training
stage wrote it: `stage1` (heads on cached features) or `stage2` (heads beside a LoRA adapter folder of the same name).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import torch

from vla_lib.atomic import atomic_write
from vla_lib.config_sections import TRAINING_STAGES
from vla_lib.data.normalization import NormStats
from vla_lib.models.configuration_policy import PolicyConfig
from vla_lib.models.modeling_policy import Stage1Policy

FORMAT = "vla_lib.heads/2"  # /1 (no stage field) is refused: nothing released wrote it
STAGES = TRAINING_STAGES  # which trainer wrote it (training.TRAINERS has one per stage)
CHECKPOINT_NAMES = {"latest": "qwen_vla_sensor.pt", "best": "qwen_vla_sensor_best.pt",
                    "final": "qwen_vla_sensor_final.pt"}


def atomic_save(obj, path: str | Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_checkpoint(path, model, stats, run_cfg, epoch: int, step: int, val_loss: float, split: dict | None = None,
                    features: dict | None = None, stage: str = "stage1") -> None:
    """`split`: {"train": [...], "val": [...]} session ids; `features`: {"fingerprint": ..., "parts": {...}} of the
    feature store the heads were trained on; `stage`: which training stage wrote it."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    atomic_save({"format": FORMAT, "stage": stage, "model_state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                 "policy_config": asdict(model.config), "run_config": run_cfg.to_dict(), "norm_stats": asdict(stats),
                 "epoch": epoch, "global_step": step, "val_loss": float(val_loss), "split": split or {},
                 "features": features or {}}, path)


class CheckpointMismatchError(RuntimeError):
    pass


class Checkpoint(NamedTuple):
    heads: object  # Stage1Policy, eval mode, every weight loaded
    run_config: dict
    stats: object  # NormStats of the training split
    split: dict  # {"train": [...], "val": [...]} session ids ({} when the caller saved none)
    features: dict  # {"fingerprint": ..., "parts": {...}} of the training feature store ({} likewise)
    stage: str  # "stage1" or "stage2" (then a LoRA adapter folder beside the file)


def feature_mismatch(trained: dict, live: dict) -> list[str]:
    """What differs between the feature-store parts the heads were trained on and those of the backbone at hand."""
    keys = sorted(set(trained) | set(live))
    return [f"{k}: trained on {trained.get(k)!r}, now {live.get(k)!r}" for k in keys if trained.get(k) != live.get(k)]


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Heads with every weight loaded, run config dict, NormStats, split, features. Refuses partial or foreign
    weights."""
    blob = _read(path)
    model = Stage1Policy(PolicyConfig(**blob["policy_config"]))
    result = model.load_state_dict(blob["model_state_dict"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointMismatchError(f"{path}: weights do not match the model: missing {result.missing_keys[:5]}, "
                                      f"unexpected {result.unexpected_keys[:5]}")
    return Checkpoint(model.eval(), blob["run_config"], NormStats.from_dict(blob["norm_stats"]), blob.get("split", {}),
                      blob.get("features", {}), blob["stage"])


def checkpoint_stage(path: str | Path) -> str:
    """Which training stage wrote the checkpoint at `path`: "stage1" or "stage2"."""
    return _read(path)["stage"]


def _read(path) -> dict:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if blob.get("format") != FORMAT or blob.get("stage") not in STAGES:
        raise CheckpointMismatchError(f"{path}: not a {FORMAT} checkpoint (format {blob.get('format')!r}, stage "
                                      f"{blob.get('stage')!r}): train it again with this version")
    return blob
