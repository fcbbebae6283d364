"""A weighted sampler that is correct under DDP and can resume mid-epoch.

Each epoch one seeded draw (seed + epoch) of `num_samples` indices with replacement, with probability proportional to
each sample's group weight (priority 2.0, regular 1.0), so a group's share of draws is weight x size / sum. Every
rank takes a disjoint stride of that one draw (no duplicated dataset objects, no identical batches across ranks).
The state (epoch, position) is saved with the run so that a resumed run continues with the very next index.
"""
from __future__ import annotations

import math

import numpy as np
import torch


class DistributedWeightedSampler(torch.utils.data.Sampler[int]):
    def __init__(self, weights, num_samples: int | None = None, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0):
        self.weights = torch.tensor(np.asarray(weights, np.float64))
        if (self.weights < 0).any() or self.weights.sum() <= 0:
            raise ValueError("sampler weights must be non-negative with a positive sum")
        total = num_samples or len(self.weights)
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        self.per_rank = math.ceil(total / num_replicas)
        self.epoch = 0
        self.position = 0  # indices of this epoch already handed out on this rank

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """The whole draw of an epoch, all ranks together (rank r takes [r::num_replicas])."""
        g = torch.Generator().manual_seed(self.seed + (self.epoch if epoch is None else epoch))
        draw = torch.multinomial(self.weights, self.per_rank * self.num_replicas, replacement=True, generator=g)
        return draw.numpy()

    def __iter__(self):
        mine = self.epoch_indices()[self.rank::self.num_replicas]
        start = self.position
        for k in range(start, len(mine)):
            self.position = k + 1
            yield int(mine[k])

    def __len__(self) -> int:
        return self.per_rank - self.position

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position, self.seed = int(state["epoch"]), int(state["position"]), int(state["seed"])
