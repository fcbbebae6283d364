"""The frame-level vision cache of Stage 2: the frozen vision tower's merged tokens, one entry per frame.

With LoRA on the language model only, the vision tower's output for a frame never changes during Stage 2, and a
frame is shared by ~5 samples (10 Hz anchors, 2 Hz cameras) and by every epoch: it is encoded once and Stage 2 runs
only the language model. Same store as Stage 1's features (`vlm.feature_store.FeatureStore`: sharded safetensors
with keys and SHA-256 in their metadata, atomic writes, damaged shards count as missing), content-addressed by its
own parts: the backbone's identity, dtype, pixel budget, image processor and library versions (no pooling, prompt or
LoRA: they act after the vision tower). An entry is keyed by the frame's identity (path under the data root, size,
mtime: the Stage-1 key's per-view part) and holds its (n_tokens, D) tokens in the backbone's dtype (exact: Stage 1
stores pooled fp16, this store keeps what the LM receives). A frame's grid is recomputed from its size and the budget
(qwen_vl_utils' `smart_resize`, the same call the message path makes) and checked against the cached token count.
"""
from __future__ import annotations

import torch

from vla_lib.data.recorder_formats import load_image
from vla_lib.vlm.cache_build import store_parts
from vla_lib.vlm.feature_store import FeatureStore, ShardWriter
from vla_lib.vlm.qwen.encode import build_messages, fit_images
from vla_lib.vlm.qwen.encode_lm import inner_model, vision_tokens

KIND = "stage2-vision-tokens/1"


def vision_parts(cfg, backbone_parts: dict) -> dict:
    parts = store_parts(cfg, backbone_parts)
    return {"kind": KIND, **{k: parts[k] for k in ("backbone", "pixel_budget", "dtype", "image_processor",
                                                   "versions")}}


def frame_key(frame_id: str) -> str:
    import hashlib

    return hashlib.sha1(frame_id.encode()).hexdigest()[:24]


def frame_grid(path, pixel_budget: int, patch: int = 14, merge: int = 2) -> tuple[int, int, int]:
    """(t, h, w) patches of a frame fitted to the budget, from its header (no decoding)."""
    from PIL import Image
    from qwen_vl_utils.vision_process import smart_resize

    with Image.open(path) as im:
        width, height = im.size
    h, w = smart_resize(height, width, factor=patch * merge, min_pixels=pixel_budget, max_pixels=pixel_budget)
    return 1, h // patch, w // patch


class VisionCache:
    """`cache.tokens(frame_key)` -> (n, D) tokens; `cache.missing(keys)`; `cache.build(...)` encodes what is missing."""

    def __init__(self, root, parts: dict):
        self.store = FeatureStore(root, parts)

    @property
    def dir(self):
        return self.store.dir

    def missing(self, keys) -> list[str]:
        return self.store.missing(keys)

    def tokens(self, key: str) -> torch.Tensor:
        """(n, D): read from the store's open shard (no second copy kept here)."""
        feats, _ = self.store.get([key], "python -m vla_lib --mode train (Stage 2 builds its vision cache)")
        return feats[0]

    def build(self, model, processor, frames: dict[str, object], pixel_budget: int, rank: int = 0, world: int = 1,
              batch_size: int = 16, log=print) -> int:
        """Encode the frames (key -> JPEG path) not in the store yet; rank r takes every world-th. Returns how many
        this rank encoded. Writes one shard family per token count (entries of a shard share one shape)."""
        vcfg = inner_model(model).config.vision_config
        patch, merge = vcfg.patch_size, vcfg.spatial_merge_size
        todo = sorted(self.missing(frames))[rank::world]
        writers: dict[int, ShardWriter] = {}
        dtype = next(model.parameters()).dtype
        for start in range(0, len(todo), batch_size):
            keys = todo[start:start + batch_size]
            images = [fit_images(build_messages([load_image(frames[k])], "", pixel_budget))[0] for k in keys]
            batch = processor.image_processor(images=images, return_tensors="pt")
            grid = batch["image_grid_thw"]
            for k, g in zip(keys, grid.tolist()):
                if tuple(g) != frame_grid(frames[k], pixel_budget, patch, merge):
                    raise RuntimeError(f"{frames[k]}: the processor's grid {g} differs from the budget's "
                                       f"{frame_grid(frames[k], pixel_budget, patch, merge)}")
            tokens = vision_tokens(model, batch["pixel_values"].to(dtype), grid).cpu()
            sizes = (grid.prod(-1) // merge ** 2).tolist()
            for k, t in zip(keys, torch.split(tokens, sizes)):
                writer = writers.setdefault(t.shape[0], ShardWriter(self.store, rank, 256, dtype=None))
                writer.add([k], t[None], torch.ones(1, t.shape[0], dtype=torch.bool))
            log(f"  vision cache: {min(start + batch_size, len(todo))}/{len(todo)} frames encoded")
        for writer in writers.values():
            writer.flush()
        return len(todo)
