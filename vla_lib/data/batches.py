"""Batches for the heads: samples joined with their cached VL features, collated (the heads' input type is built
from a collated batch by `models.inputs.inputs_from_batch`). Shared by training, offline evaluation and the
benchmarks."""
from __future__ import annotations

import numpy as np
import torch


class FeatureJoinedDataset(torch.utils.data.Dataset):
    """A SampleDataset joined with its cached VL features (a `FeatureTable` over the same rows, fp16)."""

    def __init__(self, samples, features):
        self.samples, self.features = samples, features

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        item = self.samples[i]
        item["vl"], item["vl_mask"] = self.features[i]
        return item


def collate(items: list[dict]) -> dict:
    out = {}
    for k in ("vl", "vl_mask"):  # absent in Stage 2: the step computes the features with the adapted backbone
        if k in items[0]:
            out[k] = torch.stack([it[k] for it in items])
    for k in ("sensor", "sensor_mask", "history", "contact", "target", "target_mask", "has_sensor", "weight", "index"):
        out[k] = torch.as_tensor(np.stack([np.asarray(it[k]) for it in items]))
    return out
