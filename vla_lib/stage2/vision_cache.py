"""The frame-level vision cache of Stage 2: the frozen vision tower's merged tokens, one entry per frame.

With LoRA on the language model only, the vision tower's output for a frame never changes during Stage 2, and a
frame is shared by ~5 samples (10 Hz anchors, 2 Hz cameras) and by every epoch: it is encoded once and Stage 2 runs
only the language model. Same store as Stage 1's features (`vlm.feature_store.FeatureStore`: sharded safetensors
with keys and SHA-256 in their metadata, atomic writes, damaged shards count as missing), content-addressed by its
own parts: the backbone's identity, dtype, pixel budget, image processor and library versions (no pooling, prompt or
LoRA: they act after the vision tower). An entry is keyed by the frame's identity (path under the data root, size,
mtime: the Stage-1 key's per-view part) and holds its (n_tokens, D) tokens in the backbone's dtype (exact: Stage 1
stores pooled fp16, this store keeps what the LM receives). The tokens come from the backbone
(`vlm.interface.Stage2Backbone.vision_tokens`); a frame's grid, recomputed by the backbone from the file header and
the budget, is checked against the cached token count at every step.
"""
from __future__ import annotations

import torch

from vla_lib.vlm.cache_build import store_parts
from vla_lib.vlm.feature_store import FeatureStore, ShardWriter

KIND = "stage2-vision-tokens/1"


def vision_parts(cfg, backbone_parts: dict) -> dict:
    """What identifies the vision tower's output: no pooling, prompt or views (they act after it); parts a backbone
    does not report (a processor, library versions) are left out."""
    parts = store_parts(cfg, backbone_parts)
    return {"kind": KIND, **{k: parts[k] for k in ("backbone", "pixel_budget", "dtype", "image_processor",
                                                   "versions") if k in parts}}


def frame_key(frame_id: str) -> str:
    import hashlib

    return hashlib.sha1(frame_id.encode()).hexdigest()[:24]


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

    def build(self, backbone, frames: dict[str, object], rank: int = 0, world: int = 1, batch_size: int = 16,
              log=print) -> int:
        """Encode the frames (key -> JPEG path) not in the store yet with `backbone` (a Stage2Backbone); rank r takes
        every world-th. Returns how many this rank encoded. Writes one shard family per token count (entries of a
        shard share one shape)."""
        todo = sorted(self.missing(frames))[rank::world]
        writers: dict[int, ShardWriter] = {}
        for start in range(0, len(todo), batch_size):
            keys = todo[start:start + batch_size]
            for k, t in zip(keys, backbone.vision_tokens([frames[k] for k in keys])):
                writer = writers.setdefault(t.shape[0], ShardWriter(self.store, rank, 256, dtype=None))
                writer.add([k], t[None], torch.ones(1, t.shape[0], dtype=torch.bool))
            log(f"  vision cache: {min(start + batch_size, len(todo))}/{len(todo)} frames encoded")
        for writer in writers.values():
            writer.flush()
        return len(todo)
