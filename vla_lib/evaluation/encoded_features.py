"""Held-out features computed by a policy's own (adapted) backbone, for evaluating a Stage-2 checkpoint: its
adapter changes every feature, so no Stage-1 feature store can serve them."""
from __future__ import annotations

import torch


class EncodedFeatures:
    """Features of a fixed list of samples computed by a policy's (adapted) backbone, in memory: the FeatureTable
    interface (`[i]` -> (features, mask)), for evaluating a Stage-2 checkpoint without any feature store."""

    def __init__(self, policy, index, batch_size: int = 8):
        feats, masks = [], []
        for start in range(0, len(index), batch_size):
            rows = range(start, min(start + batch_size, len(index)))
            f, m = policy.encode([index.table.at[i, "instruction"] for i in rows], [index.view_paths(i) for i in rows])
            feats.append(f.cpu()), masks.append(m.cpu())
        self.features = torch.cat(feats) if feats else torch.zeros(0)
        self.mask = torch.cat(masks) if masks else torch.zeros(0, dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i):
        return self.features[i], self.mask[i]
