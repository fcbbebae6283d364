"""What the cache, training and inference need from a VL backbone, and how a backbone is chosen.

A backbone kind is a module with two functions:
- `load(cfg: BackboneConfig) -> VLBackbone`: the loaded, frozen model behind the interface below;
- `parts(cfg: BackboneConfig) -> dict`: what identifies its features (weights, processor, template, library versions),
  computed without loading the weights, so training can find its feature store without a VLM.
`backbone.kind` names a registered kind (`qwen2_5_vl`, the default) or any importable module path (a second VLM is
one new module). Generic parts (pixel budget, dtype, pooling, views) are added by `vlm.cache_build.store_parts`.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Protocol

import torch

KINDS = {"qwen2_5_vl": "vla_lib.vlm.qwen"}

Samples = list[tuple[list, str, list[bool]]]  # per sample: present images in slot order, instruction, view mask


class VLBackbone(Protocol):
    name: str
    device: torch.device
    dtype: torch.dtype
    pixel_budget: int

    @property
    def hidden_size(self) -> int: ...  # width of one pooled feature token

    def image_reader(self, decode_in_workers: bool = False) -> Callable[[Any], Any]:
        """What a DataLoader worker makes of an image file (a decoded image, or its bytes for a device preparation)."""

    def preparer(self) -> Callable[[Samples], Any] | None:
        """A picklable CPU function samples -> encoder inputs for the workers, or None when `prepare` runs on the
        device in the main process."""

    def prepare(self, samples: Samples):
        """The whole preparation in the calling process (images: paths, PIL images, arrays, or what the reader gave)."""

    def encode(self, inputs, pooling: str = "per_view") -> tuple[torch.Tensor, torch.Tensor]:
        """(features (B, V+1, D) float32 on the device, token mask (B, V+1) bool); `mean_all`: one token."""

    def set_pixel_budget(self, budget: int) -> None: ...  # pixels per view the images are fitted to

    def parts(self) -> dict: ...  # what identifies its features (as the kind's `parts(cfg)`, from the loaded model)

    def describe(self) -> str: ...  # one line for logs: the forward path in use

    def tokens_per_view(self, inputs) -> int: ...  # visual tokens one view of these inputs costs

    @property
    def warmup_s(self) -> float: ...  # one-off compile/capture time spent so far (0 when none)

    def adopt_model(self, model: torch.nn.Module) -> None: ...  # run this model from now on (a Stage-2 adapter applied)


def _kind_module(kind: str):
    try:
        return importlib.import_module(KINDS.get(kind, kind))
    except ModuleNotFoundError as e:
        from vla_lib.errors import ConfigError

        raise ConfigError(f"backbone.kind {kind!r}: neither a registered kind ({sorted(KINDS)}) nor an importable "
                          f"module ({e})") from None


def load_backbone(cfg) -> VLBackbone:
    """`cfg` is a BackboneConfig."""
    return _kind_module(cfg.kind).load(cfg)


def backbone_parts(cfg) -> dict:
    """What identifies the backbone's features, without loading its weights."""
    return _kind_module(cfg.kind).parts(cfg)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
            "fp32": torch.float32, "float32": torch.float32}[name]
