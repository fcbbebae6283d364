"""Training's guard against non-finite values: the first optimiser step whose loss or gradient norm is not finite
stops the run, and nothing from that step on is saved (checkpoints keep the last finite weights)."""
from __future__ import annotations

import math

import torch


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or gradient norm: the run stops, and nothing after it is saved."""


class FiniteGuard:
    """Watches every optimiser step's loss and gradient norm on the device (no host sync per step) and remembers the
    first step where either was not finite; `check` (at each log and before anything is saved) raises then.

    Stopping, not skipping: a NaN in a needle-insertion policy's training is a bug to look at (data, learning rate,
    a kernel), not noise to step over, and a skipped step would hide it behind a finite curve."""

    def __init__(self, device, first_step: int = 1):
        self.first_step = first_step  # the step number of the next update (a resumed run starts later)
        self.count = torch.zeros((), device=device)  # updates so far, counted on the device: no host copy per step
        self.first = torch.zeros(3, device=device)  # (step, loss, grad norm) of the first bad step; step 0 = none

    def update(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """One optimiser step's loss and gradient norm (device tensors)."""
        bad = ~(torch.isfinite(loss) & torch.isfinite(grad_norm)) & (self.first[0] == 0)
        now = torch.stack([self.count + self.first_step, loss.detach().float(), grad_norm.detach().float()])
        self.first = torch.where(bad, now, self.first)
        self.count += 1

    def check(self, where: str) -> None:
        step, loss, grad = self.first.tolist()
        if step:
            what = " and ".join(n for n, v in (("loss", loss), ("gradient norm", grad)) if not math.isfinite(v))
            raise NonFiniteError(f"training stopped at optimiser step {int(step)}: the {what} "
                                 f"{'were' if ' and ' in what else 'was'} not finite (loss "
                                 f"{loss}, gradient norm {grad}); nothing was saved from that step on ({where}), the "
                                 "checkpoints hold the last finite weights. Lower train.lr / sensor_lr, check the data "
                                 "with --mode audit, or train with train.compile false to tell a compiler bug apart")
