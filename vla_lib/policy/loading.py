"""Which checkpoint a run's config names, and the policy it loads (heads + the configured backbone)."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from vla_lib.policy.checkpoint import CHECKPOINT_NAMES
from vla_lib.policy.vla_policy import VLAPolicy


def checkpoint_path(cfg) -> Path:
    """`eval.checkpoint`, or the run's best checkpoint."""
    return Path(cfg.eval.checkpoint or Path(cfg.train.output_dir) / "checkpoints" / CHECKPOINT_NAMES["best"])


def load_policy(cfg, device: str = "auto") -> VLAPolicy:
    """The checkpoint's heads + the configured backbone (the params file's backbone section wins, so a user can
    time the same heads behind another backbone build, e.g. `random_weights`)."""
    return VLAPolicy.from_checkpoint(checkpoint_path(cfg), device=device,
                                     allow_backbone_mismatch=cfg.eval.allow_backbone_mismatch,
                                     **{k: v for k, v in asdict(cfg.backbone).items() if k != "device"})
