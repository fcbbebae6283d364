"""What the cache, training and inference need from a VL backbone, and how a backbone is chosen.

A backbone kind is a module with two functions:
- `load(cfg: BackboneConfig) -> VLBackbone`: the loaded, frozen model behind the interface below;
- `parts(cfg: BackboneConfig) -> dict`: what identifies its features (weights, processor, template, library versions),
  computed without loading the weights, so training can find its feature store without a VLM.
`backbone.kind` names a registered kind (`qwen2_5_vl`, the default) or any importable module path (a second VLM is
one new module). Generic parts (pixel budget, dtype, pooling, views) are added by `vlm.cache_build.store_parts`.
Stage 2 (LoRA on the language model) needs more of a backbone: `Stage2Backbone`, checked by `require_stage2`.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Protocol

import torch

KINDS = {"qwen2_5_vl": "vla_lib.vlm.qwen"}

Samples = list[tuple[list, str, list[bool]]]  # per sample: present images in slot order, instruction, view mask
GridSamples = list[tuple[str, list[bool], list[tuple]]]  # per sample: instruction, view mask, present views' grids


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


class Stage2Backbone(Protocol):
    """What Stage 2 (`vla_lib.stage2`) needs of a backbone besides `VLBackbone`: LoRA (peft) on the decoder layers of
    its language model, run with gradients by the backbone's own LM path over the frozen vision tower's tokens, which
    Stage 2 caches per frame (a frame is shared by several samples and every epoch). A plan is the backbone's own
    object: CPU tensors, `plan.to(device)`, and `plan.token_mask` (B, T) bool, which pooled tokens are real."""

    model: torch.nn.Module  # what peft wraps (LoRA injected in place); frozen
    processor: Any
    vision_scope: str  # a fragment of the dotted names of the vision tower's modules (LoRA must not reach them)
    lm_layer_scope: str  # ... of the language model's decoder layers (the only modules Stage 2 trains)

    def frame_grid(self, path) -> tuple: ...  # a frame's vision grid at the pixel budget, from its file header

    def grid_tokens(self, grid: tuple) -> int: ...  # the vision tokens a frame of this grid gives

    def vision_tokens(self, paths: list) -> list[torch.Tensor]:
        """The frozen vision tower's tokens of each frame file, (n_i, D) on the CPU (what the vision cache stores)."""

    def plan(self, samples: GridSamples, pooling: str = "per_view"):
        """A batch's LM plan from its frames' grids: no pixels (the image tokens come from the vision cache)."""

    def plan_from_pixels(self, samples: Samples, pooling: str = "per_view") -> tuple[Any, torch.Tensor]:
        """(plan, image tokens on the device) from decoded images: the vision tower runs without gradients."""

    def lm_features(self, model, plan, image_tokens: torch.Tensor, gradient_checkpointing: bool = False,
                    layer_fn=None) -> torch.Tensor:
        """(B, T, D) float32 pooled features with gradients through `model` (the peft model around `self.model`),
        `plan` on its device; `layer_fn`: None (layers called directly) or what `compiled_layer` gave."""

    def compiled_layer(self) -> Callable: ...  # a `layer_fn` through torch.compile (CUDA)

    def set_model(self, model: torch.nn.Module) -> None: ...  # use `model` (an adapter loaded onto it) from now on


def stage2_missing(backbone) -> list[str]:
    """The `Stage2Backbone` members `backbone` lacks (empty: Stage 2 can run on it)."""
    members = [*Stage2Backbone.__annotations__, *(k for k, v in vars(Stage2Backbone).items()
                                                  if callable(v) and not k.startswith("_"))]
    return [m for m in members if not hasattr(backbone, m)]


def require_stage2(backbone, kind: str) -> None:
    """One line, instead of an AttributeError deep in a step, when the backbone of `kind` cannot do Stage 2."""
    if missing := stage2_missing(backbone):
        from vla_lib.errors import ConfigError

        raise ConfigError(f"backbone.kind {kind!r} ({type(backbone).__name__}) cannot run Stage 2: it lacks "
                          f"{', '.join(missing)} of vlm.interface.Stage2Backbone")


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
