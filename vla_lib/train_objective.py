"""Loss weights, masked MSE, parameter groups and lr schedule: the pieces of `train.loss_fn` and the optimiser."""
from __future__ import annotations

import math

import torch

from vla_lib.dims import POSE_DIMS
from vla_lib.models.modeling_policy import Stage1Policy

LOSS_DIMS = POSE_DIMS  # the constant gripper (7th) carries no signal: excluded from loss and metrics


# ---------------------------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------------------------
def sample_weights(has_sensor: torch.Tensor, cfg) -> torch.Tensor:
    """Per-sample loss weights: sensor_loss_weight for samples with sensor, nonsensor_confidence (0.5) for samples
    without. Normalised by the *training-set* mean weight (a constant), not per micro-batch, so they really change
    the gradient at batch size 1 (renormalised per micro-batch, a batch of one would always weigh 1: a no-op)."""
    return torch.where(has_sensor, cfg.sensor_loss_weight, cfg.nonsensor_confidence).float()


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
