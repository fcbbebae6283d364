"""A second, fake VL backbone behind `vla_lib.vlm.interface` (`backbone.kind: tests.vlm.toy_backbone`): each view's
token is a fixed random projection of its mean colour, the instruction token one of its characters' codes. Small and
deterministic, it proves the cache, training and inference speak to the interface only, not to Qwen."""
from __future__ import annotations

import hashlib
from functools import partial

import numpy as np
import torch
from PIL import Image

HIDDEN = 12


def _pixels(im) -> np.ndarray:
    if isinstance(im, np.ndarray):
        return im.astype(np.float32)
    return np.asarray(im if isinstance(im, Image.Image) else Image.open(im).convert("RGB"), np.float32)


def _prepare(samples, budget: int) -> dict:
    """Per sample: the mean RGB of each present view (slot order), the instruction's character sum, the view mask."""
    colours = [[_pixels(im).reshape(-1, 3).mean(0) / 255.0 for im in images] for images, _, _ in samples]
    return {"colours": colours, "text": torch.tensor([sum(map(ord, instr)) % 997 / 997.0 for _, instr, _ in samples]),
            "views": torch.tensor([m for _, _, m in samples], dtype=torch.bool), "budget": budget}


class ToyBackbone:
    name = "toy"

    def __init__(self, cfg):
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.pixel_budget = cfg.image_resize_height * cfg.image_resize_width
        g = torch.Generator().manual_seed(0)
        self.proj, self.text = torch.randn(3, HIDDEN, generator=g), torch.randn(HIDDEN, generator=g)

    @property
    def hidden_size(self) -> int:
        return HIDDEN

    @property
    def warmup_s(self) -> float:
        return 0.0

    def image_reader(self, decode_in_workers: bool = False):
        return lambda path: Image.open(path).convert("RGB")

    def preparer(self):
        return partial(_prepare, budget=self.pixel_budget)

    def prepare(self, samples):
        return self.preparer()(samples)

    def encode(self, inputs, pooling: str = "per_view"):
        views = inputs["views"]
        feats = torch.zeros(len(views), views.shape[1] + 1, HIDDEN)
        for i, colours in enumerate(inputs["colours"]):
            slots = torch.nonzero(views[i]).squeeze(-1).tolist()
            for slot, c in zip(slots, colours):
                feats[i, slot] = torch.as_tensor(c) @ self.proj
            feats[i, -1] = inputs["text"][i] * self.text
        mask = torch.cat([views, torch.ones(len(views), 1, dtype=torch.bool)], 1)
        return feats, mask

    def set_pixel_budget(self, budget: int) -> None:
        self.pixel_budget = budget

    def parts(self) -> dict:
        return parts(None)

    def describe(self) -> str:
        return "toy: mean colour per view"

    def tokens_per_view(self, inputs) -> int:
        return 1


def load(cfg) -> ToyBackbone:
    return ToyBackbone(cfg)


def parts(cfg) -> dict:
    return {"backbone": "toy-" + hashlib.sha1(b"toy backbone v1").hexdigest()[:8]}
