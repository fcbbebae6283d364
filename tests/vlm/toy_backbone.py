"""A second, fake VL backbone behind `vla_lib.vlm.interface` (`backbone.kind: tests.vlm.toy_backbone`): each view's
token is a fixed projection of its mean colour (the "vision tower"), the instruction's token a fixed vector scaled
by its characters' codes, and two small residual layers (the "language model") mix the tokens. Small and
deterministic, it proves the cache, training, inference and Stage 2 (`Stage2Backbone`: LoRA on its layers) speak to
the interface only, not to Qwen."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from PIL import Image

HIDDEN = 12


def _pixels(im) -> np.ndarray:
    if isinstance(im, np.ndarray):
        return im.astype(np.float32)
    return np.asarray(im if isinstance(im, Image.Image) else Image.open(im).convert("RGB"), np.float32)


def _colours(images) -> list[torch.Tensor]:
    return [torch.as_tensor(_pixels(im).reshape(-1, 3).mean(0) / 255.0) for im in images]


def _text(instructions) -> torch.Tensor:
    return torch.tensor([sum(map(ord, instr)) % 997 / 997.0 for instr in instructions])


def _prepare(samples, budget: int) -> dict:
    """Per sample: the mean RGB of each present view (slot order), the instruction's character sum, the view mask."""
    return {"colours": [_colours(images) for images, _, _ in samples], "text": _text([i for _, i, _ in samples]),
            "views": torch.tensor([m for _, _, m in samples], dtype=torch.bool), "budget": budget}


class ToyLayer(torch.nn.Module):
    """A residual block; its projections carry the names the default LoRA targets look for."""

    def __init__(self):
        super().__init__()
        self.q_proj, self.o_proj = torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.Linear(HIDDEN, HIDDEN)

    def forward(self, x):
        return x + self.o_proj(torch.tanh(self.q_proj(x)))


class ToyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.visual = torch.nn.Module()
        self.visual.proj = torch.nn.Linear(3, HIDDEN, bias=False)
        self.register_buffer("text", torch.randn(HIDDEN))
        self.layers = torch.nn.ModuleList([ToyLayer(), ToyLayer()])


@dataclass
class ToyPlan:
    text: torch.Tensor  # (B,)
    views: torch.Tensor  # (B, V) bool

    def to(self, device) -> "ToyPlan":
        return ToyPlan(self.text.to(device), self.views.to(device))

    @property
    def token_mask(self) -> torch.Tensor:
        return torch.cat([self.views, torch.ones(len(self.views), 1, dtype=torch.bool, device=self.views.device)], 1)


def _call(layer, x):
    return layer(x)


def _lm(model, plan: ToyPlan, image_tokens: torch.Tensor, layer_fn=_call) -> torch.Tensor:
    """(B, V+1, D): image tokens in their slots, the instruction token last, through the layers; masked slots 0."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    x = torch.zeros(len(plan.views), plan.views.shape[1] + 1, HIDDEN)
    x[:, :-1][plan.views] = image_tokens.to(x.dtype)
    x[:, -1] = plan.text[:, None] * base.text
    for layer in base.layers:
        x = layer_fn(layer, x)
    return x * plan.token_mask[..., None]


class ToyBackbone:
    name = "toy"
    vision_scope, lm_layer_scope = ".visual.", ".layers."

    def __init__(self, cfg):
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.pixel_budget = cfg.image_resize_height * cfg.image_resize_width
        self.processor = None  # images need no processor here
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.model = ToyModel().eval().requires_grad_(False)

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

    @torch.no_grad()
    def _view_tokens(self, colours: list[torch.Tensor]) -> torch.Tensor:
        """The "vision tower": (N, D), one token per view."""
        return self.model.visual.proj(torch.stack(colours).float()) if colours else torch.zeros(0, HIDDEN)

    @torch.no_grad()
    def encode(self, inputs, pooling: str = "per_view"):
        plan = ToyPlan(inputs["text"], inputs["views"])
        tokens = self._view_tokens([c for cs in inputs["colours"] for c in cs])
        return _lm(self.model, plan, tokens), plan.token_mask

    def set_pixel_budget(self, budget: int) -> None:
        self.pixel_budget = budget

    def parts(self) -> dict:
        return parts(None)

    def describe(self) -> str:
        return "toy: mean colour per view, two residual layers"

    def tokens_per_view(self, inputs) -> int:
        return 1

    # -- Stage 2 (Stage2Backbone) ----------------------------------------------------------------------------------
    def frame_grid(self, path) -> tuple:
        return (1,)  # one token a frame, whatever its size

    def grid_tokens(self, grid) -> int:
        return grid[0]

    def vision_tokens(self, paths: list) -> list[torch.Tensor]:
        return list(self._view_tokens(_colours(paths)).split(1))

    def plan(self, samples, pooling: str = "per_view") -> ToyPlan:
        return ToyPlan(_text([i for i, _, _ in samples]), torch.tensor([m for _, m, _ in samples], dtype=torch.bool))

    def plan_from_pixels(self, samples, pooling: str = "per_view"):
        inputs = _prepare(samples, self.pixel_budget)
        return ToyPlan(inputs["text"], inputs["views"]), self._view_tokens([c for cs in inputs["colours"] for c in cs])

    def lm_features(self, model, plan, image_tokens, gradient_checkpointing: bool = False, layer_fn=None):
        return _lm(model, plan, image_tokens, layer_fn or _call)  # two tiny layers: nothing to checkpoint

    def compiled_layer(self):
        return _call  # nothing worth compiling

    def set_model(self, model) -> None:
        self.model = model.eval().requires_grad_(False)


def load(cfg) -> ToyBackbone:
    return ToyBackbone(cfg)


def parts(cfg) -> dict:
    return {"backbone": "toy-" + hashlib.sha1(b"toy backbone v2").hexdigest()[:8]}
