"""How our own LM paths call Qwen2.5-VL's decoder layers: the fast encoder's forward (`fast_vision`) and Stage 2's
LM with gradients (`encode_lm`) share the layer call and the padded causal mask, so both compute one function."""
from __future__ import annotations

import torch


def lm_layer(layer, h, mask, position_embeddings):
    """One decoder layer; its own function so that `torch.compile` of it is shared by the LM's identical layers."""
    out = layer(h, attention_mask=mask, position_embeddings=position_embeddings)  # no cache: the defaults
    return out[0] if isinstance(out, tuple) else out


def causal_mask(valid: torch.Tensor, dtype) -> torch.Tensor:
    """Additive (B, 1, L, L): causal, padded keys hidden; a padded query sees itself (no empty softmax row whose NaN
    would leak through the values)."""
    n = valid.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=valid.device).tril()
    keep = (causal[None] & valid[:, None, :]) | torch.eye(n, dtype=torch.bool, device=valid.device)[None]
    return torch.zeros(keep.shape, dtype=dtype, device=valid.device).masked_fill(~keep, torch.finfo(dtype).min)[:, None]
