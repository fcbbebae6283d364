"""The language model with gradients, for Stage 2: pooled VL features per sample, correct for any batch size.

Two sources for the images' merged vision tokens, one LM path:
- cached (`plan_from_grids` + tokens from Stage 2's frame-level vision cache, which `frame_tokens` fills and
  `frame_grid` checks): the prompt is tokenised here, each image's `<|image_pad|>` expanded to its token count from
  its grid, so no pixels are prepared at all;
- from pixels (`plan_from_processor` + `vision_tokens`): the processor's batch, the frozen vision tower run without
  gradients.
`lm_features` then runs the LM the way the fast encoder does (`fast_vision`): the layout (3-D rotary positions
via the model's `get_rope_index`, image rows, padding, pooling weights) planned on the CPU, the image tokens written
into the embedded prompt, each decoder layer called directly (optionally under activation checkpointing), and the
last-layer states pooled per sample with Stage 1's weights (`encode.pooling_weights`): per view the mean of its
image tokens, plus the instruction token. Every sample has its own row of weights (a batch is never pooled into one
vector), and padding never enters a mean.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from vla_lib.data.recorder_files import load_image
from vla_lib.vlm.qwen.encode import build_messages, fit_images, pooling_weights
from vla_lib.vlm.qwen.lm_layers import causal_mask, lm_layer


@dataclass
class LMPlan:
    """A batch's layout, CPU tensors: what the LM needs besides the image tokens."""

    input_ids: torch.Tensor  # (B, L)
    valid: torch.Tensor  # (B, L) bool
    positions: torch.Tensor  # (3, B, L) rotary positions
    image_rows: torch.Tensor  # (N_image_tokens,) rows of the flattened (B*L) prompt that hold image tokens
    pool_weights: torch.Tensor  # (B, T, L)
    token_mask: torch.Tensor  # (B, T) bool: which pooled tokens are real (a missing view is a masked slot)
    grid_thw: torch.Tensor  # (N_images, 3)
    padded: bool  # decided on the CPU: no host sync on the device

    def to(self, device) -> "LMPlan":
        return LMPlan(*(getattr(self, f).to(device, non_blocking=True) if torch.is_tensor(getattr(self, f))
                        else getattr(self, f) for f in self.__dataclass_fields__))


def inner_model(model):
    """The Qwen2_5_VLModel (embeddings, vision tower, LM) of a plain or peft-wrapped backbone."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model


def _plan(model, ids, attention_mask, grid, view_masks, pooling) -> LMPlan:
    config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
    mm = (ids == config.image_token_id).long()
    positions, _ = inner_model(model).get_rope_index(ids, mm, image_grid_thw=grid, attention_mask=attention_mask)
    weights, token_mask = pooling_weights(ids, attention_mask, grid, view_masks, config, pooling)
    rows = torch.nonzero((ids == config.image_token_id).flatten()).squeeze(-1)
    return LMPlan(ids, attention_mask.bool(), positions, rows, weights.float(), token_mask, grid,
                  not bool(attention_mask.bool().all()))


def plan_from_processor(model, batch: dict, view_masks: torch.Tensor, pooling: str = "per_view") -> LMPlan:
    """From a processor batch (vlm.encode.prepare_inputs(...).batch)."""
    return _plan(model, batch["input_ids"].cpu(), batch["attention_mask"].cpu(), batch["image_grid_thw"].cpu(),
                 view_masks, pooling)


def plan_from_grids(model, processor, samples: list[tuple[str, list[bool], list]], pooling: str = "per_view",
                    pixel_budget: int = 1) -> LMPlan:
    """`samples`: (instruction, view mask over all slots, grid (t, h, w) of each present view in slot order). The
    prompt is the one `prepare_inputs` builds (same messages, chat template), with each `<|image_pad|>` expanded to
    the image's merged token count, as the processor does; no pixels needed."""
    config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
    merge = config.vision_config.spatial_merge_size ** 2
    pad = processor.image_token
    texts, grids = [], []
    for instruction, _, sample_grids in samples:
        messages = build_messages([None] * len(sample_grids), instruction, pixel_budget)
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        parts = text.split(pad)
        if len(parts) != len(sample_grids) + 1:
            raise RuntimeError(f"{len(parts) - 1} image placeholders in the prompt for {len(sample_grids)} images")
        counts = [int(t * h * w) // merge for t, h, w in sample_grids]
        texts.append(parts[0] + "".join(pad * n + rest for n, rest in zip(counts, parts[1:])))
        grids += [list(g) for g in sample_grids]
    tok = processor.tokenizer(texts, padding=True, return_tensors="pt")
    grid = torch.tensor(grids, dtype=torch.long).reshape(-1, 3)
    view_masks = torch.tensor([m for _, m, _ in samples], dtype=torch.bool)
    return _plan(model, tok["input_ids"], tok["attention_mask"], grid, view_masks, pooling)


@torch.no_grad()
def vision_tokens(model, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
    """The frozen vision tower's merged tokens of every image, concatenated in order: (N_image_tokens, D)."""
    inner = inner_model(model)
    out = inner.get_image_features(pixel_values.to(inner.visual.device), grid_thw.to(inner.visual.device))
    # transformers >= 5.2x: an output whose pooler_output is the per-image split; earlier 5.x: the split itself
    return torch.cat(tuple(getattr(out, "pooler_output", out)), 0)


def frame_grid(path, pixel_budget: int, patch: int = 14, merge: int = 2) -> tuple[int, int, int]:
    """(t, h, w) patches of a frame fitted to the budget, from its header (no decoding): qwen_vl_utils'
    `smart_resize`, the call the message path makes."""
    from PIL import Image
    from qwen_vl_utils.vision_process import smart_resize

    with Image.open(path) as im:
        width, height = im.size
    h, w = smart_resize(height, width, factor=patch * merge, min_pixels=pixel_budget, max_pixels=pixel_budget)
    return 1, h // patch, w // patch


def frame_tokens(model, processor, paths: list, pixel_budget: int) -> list[torch.Tensor]:
    """Each frame's merged vision tokens (n_i, D) on the CPU, in the model's dtype: one image processor batch of the
    frames alone (no prompt), each grid checked against the one its header gives (what `plan_from_grids` uses)."""
    vcfg = inner_model(model).config.vision_config
    patch, merge = vcfg.patch_size, vcfg.spatial_merge_size
    dtype = next(model.parameters()).dtype
    images = [fit_images(build_messages([load_image(p)], "", pixel_budget))[0] for p in paths]
    batch = processor.image_processor(images=images, return_tensors="pt")
    grid = batch["image_grid_thw"]
    for p, g in zip(paths, grid.tolist()):
        if tuple(g) != frame_grid(p, pixel_budget, patch, merge):
            raise RuntimeError(f"{p}: the processor's grid {g} differs from the budget's "
                               f"{frame_grid(p, pixel_budget, patch, merge)}")
    tokens = vision_tokens(model, batch["pixel_values"].to(dtype), grid).cpu()
    return list(torch.split(tokens, (grid.prod(-1) // merge ** 2).tolist()))


def compiled_layer():
    """A decoder-layer call for `lm_features(layer_fn=...)` through one `torch.compile`: the LM's identical layers
    share it (regional compilation, compiled once); dynamic shapes, since prompt lengths vary between batches."""
    return torch.compile(lm_layer, dynamic=True)


def lm_features(model, plan: LMPlan, image_tokens: torch.Tensor, gradient_checkpointing: bool = False,
                layer_fn=None) -> torch.Tensor:
    """(B, T, D) float32 pooled features with gradients through the LM (LoRA). `plan` on the model's device.
    `layer_fn`: how a decoder layer is called (default: directly; e.g. a `torch.compile`d `lm_layer`, which
    identical layers share: regional compilation)."""
    layer_fn = layer_fn or lm_layer
    lm = inner_model(model).language_model
    ids = plan.input_ids
    b, length = ids.shape
    x = lm.embed_tokens(ids)
    if image_tokens.shape[0] != plan.image_rows.shape[0]:
        raise RuntimeError(f"{image_tokens.shape[0]} image tokens for {plan.image_rows.shape[0]} image positions")
    x = x.reshape(b * length, -1).index_copy(0, plan.image_rows, image_tokens.to(x.dtype)).view(b, length, -1)
    position_embeddings = lm.rotary_emb(x, plan.positions)
    sdpa = lm.config._attn_implementation == "sdpa"
    mask = causal_mask(plan.valid, x.dtype) if plan.padded or not sdpa else None  # None: SDPA's causal flag
    for layer in lm.layers:
        if gradient_checkpointing and torch.is_grad_enabled():
            x = checkpoint(layer_fn, layer, x, mask, position_embeddings, use_reentrant=False)
        else:
            x = layer_fn(layer, x, mask, position_embeddings)
    x = lm.norm(x)
    return torch.bmm(plan.pool_weights, x.float())
