"""From views + instruction to pooled VL features: the message path, then pad-aware pooling.

Message path: one user turn with the views in order, then the instruction; the processor's chat
template (with Qwen's default system prompt); `qwen_vl_utils.process_vision_info` (each image fitted to the pixel
budget, min = max = budget, 640x360 by default); then the processor.

Pooling:
- `per_view` (default): for each configured view, the mean of the last-layer states over that view's image tokens,
  plus one instruction token (mean over the instruction's text tokens, which attend to every view): V+1 tokens and a
  mask (a missing view is a zero slot with mask False). Keeps which view saw what, at 6 x hidden per sample.
- `mean_all`: a single mean over every token (system prompt included), for comparison; pad-aware.
Padding never enters a mean.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

POOLINGS = ("per_view", "mean_all")


def build_messages(images: list, instruction: str, pixel_budget: int) -> list[dict]:
    """`images`: the present views in slot order (paths or PIL images)."""
    content = [{"type": "image", "image": _as_image_ref(im), "min_pixels": pixel_budget, "max_pixels": pixel_budget}
               for im in images]
    return [{"role": "user", "content": content + [{"type": "text", "text": instruction}]}]


def _as_image_ref(im):
    from pathlib import Path

    import numpy as np
    from PIL import Image

    if isinstance(im, (str, Path)):
        return Path(im).resolve().as_uri()  # a file:// URI, so qwen_vl_utils never treats it as a URL to fetch
    if isinstance(im, np.ndarray):
        return Image.fromarray(im)
    return im


def fit_images(messages: list[dict]) -> list:
    """Decode and resize the message's images to the budget (qwen_vl_utils' process_vision_info)."""
    from qwen_vl_utils import process_vision_info

    images, _ = process_vision_info(messages)
    return images or []


@dataclass
class EncoderInputs:
    batch: dict  # processor output (input_ids, attention_mask, pixel_values, image_grid_thw)
    view_masks: torch.Tensor  # (B, V) bool: which configured slots hold an image
    # What `encode` plans from the non-pixel inputs (pooling weights, the fast encoder's layout), shared between
    # inputs with the same text side (gpu_prepare keeps one per instructions + view sets + sizes); None: plan anew.
    plans: dict | None = None

    def pin_memory(self) -> "EncoderInputs":
        """Called by a DataLoader with pin_memory=True: page-locked pixels copy to the GPU asynchronously."""
        return EncoderInputs({k: v.pin_memory() for k, v in self.batch.items()}, self.view_masks, self.plans)


def prepare_inputs(processor, samples: list[tuple[list, str, list[bool]]], pixel_budget: int,
                   pixel_dtype: torch.dtype | None = None) -> EncoderInputs:
    """`samples`: (present images in slot order, instruction, view mask over all slots). CPU work: runs in workers.
    `pixel_dtype`: the backbone's dtype, so that the pixels cross to the device at half the bytes (bf16)."""
    texts, all_images = [], []
    for images, instruction, _ in samples:
        messages = build_messages(images, instruction, pixel_budget)
        texts.append(processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False))
        all_images += fit_images(messages)
    batch = dict(processor(text=texts, images=all_images or None, padding=True, return_tensors="pt"))
    if pixel_dtype is not None and "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(pixel_dtype)
    return EncoderInputs(batch, torch.tensor([m for _, _, m in samples], dtype=torch.bool))


def prepare_for(backbone, samples: list[tuple[list, str, list[bool]]]) -> EncoderInputs:
    """`prepare_inputs` on the CPU, or on the device when the backbone has a device preparation
    (`backbone.image_prep`, vlm/gpu_prepare.py): then images may also be JPEG bytes."""
    if getattr(backbone, "prep", None) is not None:
        return backbone.prep(samples, backbone.pixel_budget)
    return prepare_inputs(backbone.processor, samples, backbone.pixel_budget, backbone.dtype)


@torch.inference_mode()
def encode(backbone, inputs: EncoderInputs, pooling: str = "per_view") -> tuple[torch.Tensor, torch.Tensor]:
    """(features (B, T, D) float32, token mask (B, T) bool). T = V + 1 for per_view, 1 for mean_all. Through the
    backbone's fast encoder when it has one (vlm/fast_vision.py), else transformers' stock forward."""
    plans = inputs.plans if inputs.plans is not None else {}
    if pooling not in plans:
        plans[pooling] = pooling_weights(inputs.batch["input_ids"], inputs.batch["attention_mask"],
                                         inputs.batch.get("image_grid_thw"), inputs.view_masks, backbone.config,
                                         pooling)
    weights, mask = plans[pooling]
    if backbone.fast is not None:
        from vla_lib.vlm.qwen.fast_vision import plan_layout

        if (pooling, "layout") not in plans:
            plans[pooling, "layout"] = plan_layout(backbone.model, inputs.batch, weights)
        layout = plans[pooling, "layout"]
        # From page-locked memory, non-blocking: a copy that waits for the stream would hold the host until this
        # batch is done, and the GPU would idle while the host prepares the next one.
        mask = mask.pin_memory() if backbone.device.type == "cuda" else mask
        return backbone.fast(inputs.batch.get("pixel_values"), layout), mask.to(backbone.device, non_blocking=True)
    batch = {k: v.to(backbone.device) for k, v in inputs.batch.items()}
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(backbone.dtype)
    # The LM body only: no lm_head, no logits over the vocabulary.
    hidden = backbone.model.model(**batch, use_cache=False).last_hidden_state.float()
    return torch.bmm(weights.to(hidden.device), hidden), mask.to(hidden.device)


def pooling_weights(input_ids, attention_mask, grid_thw, view_masks, config, pooling):
    """(B, T, L) averaging weights over the token axis and the (B, T) token mask, from the CPU-side batch: pooled
    features are `weights @ hidden`, one batched product (no per-sample indexing on the device)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    b, length = input_ids.shape
    valid = attention_mask.bool()
    if pooling == "mean_all":
        w = valid.float()
        return (w / w.sum(1, keepdim=True)).unsqueeze(1), torch.ones(b, 1, dtype=torch.bool)
    merge = config.vision_config.spatial_merge_size ** 2
    tokens_per_image = (grid_thw.prod(-1) // merge).tolist() if grid_thw is not None else []
    n_views = view_masks.shape[1]
    weights = torch.zeros(b, n_views + 1, length)
    image_k = 0
    for i in range(b):
        ids = input_ids[i]
        positions = torch.nonzero((ids == config.image_token_id) & valid[i]).squeeze(-1)
        start = 0
        for slot in torch.nonzero(view_masks[i]).squeeze(-1).tolist():
            n = tokens_per_image[image_k]
            weights[i, slot, positions[start:start + n]] = 1.0 / n
            start, image_k = start + n, image_k + 1
        if start != len(positions):
            raise RuntimeError(f"sample {i}: {len(positions)} image tokens but the grids account for {start}")
        # Instruction: the text between the last <|vision_end|> and the turn's <|im_end|>.
        ends = torch.nonzero((ids == config.vision_end_token_id) & valid[i]).squeeze(-1)
        im_end = torch.nonzero((ids == _im_end_id(config, ids)) & valid[i]).squeeze(-1)
        first = int(ends[-1]) + 1 if len(ends) else int(torch.nonzero(valid[i])[0])
        last = int(im_end[im_end > first][0]) if (im_end > first).any() else int(torch.nonzero(valid[i])[-1]) + 1
        weights[i, n_views, first:last] = 1.0 / (last - first)
    return weights, torch.cat([view_masks.bool(), torch.ones(b, 1, dtype=torch.bool)], 1)


def _im_end_id(config, ids) -> int:
    eos = config.text_config.eos_token_id
    return eos[0] if isinstance(eos, (list, tuple)) else eos
