"""A fast vision path for Qwen2.5-VL: one variable-length attention call per vision layer.

For `sdpa`, `eager` and `flex_attention`, transformers runs the vision tower's windowed attention as a Python loop,
one attention call per window (~120 windows per sample x 32 layers) plus a host sync per layer for the window
lengths. Here each vision attention module of *our* model instance gets a forward that runs every window of every
image of the batch in one call:
- `varlen` (CUDA, torch >= 2.10): `torch.nn.attention.varlen.varlen_attn` (flash kernels bundled with torch) over
  the cumulative window lengths; chosen by measurement (gpu_measurements.md: 63-71 ms/sample against 72-86 ms for a
  flex_attention block mask and a dense masked SDPA whose mask grows quadratically with the batch);
- `masked_sdpa` (anywhere, the CPU fallback and the reference for the logic): one SDPA call with a block-diagonal
  mask built once per forward.
The window lengths and their maxima are computed once per forward (not per layer, not with a sync per layer).
Nothing is patched globally: the replacement forward is bound to each attention module of this model only, and
`disable_fast_vision` restores it. An unexpected transformers version (the attention forward does not take the
arguments this relies on) keeps the stock path and says so.
"""
from __future__ import annotations

import inspect
import sys
import types
import warnings

import torch
import torch.nn.functional as F

BACKENDS = ("varlen", "masked_sdpa")


def _varlen_available() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def choose_backend(device: torch.device, requested: str = "auto") -> str:
    if requested != "auto":
        if requested not in BACKENDS:
            raise ValueError(f"fast vision backend must be one of {BACKENDS} or 'auto', got {requested!r}")
        return requested
    return "varlen" if device.type == "cuda" and _varlen_available() else "masked_sdpa"


def _visual(model) -> torch.nn.Module:
    return model.model.visual if hasattr(model, "model") and hasattr(model.model, "visual") else model.visual


def _vision_attention_modules(model) -> list[torch.nn.Module]:
    return [blk.attn for blk in _visual(model).blocks]


def _compatible(attn) -> str | None:
    """None if the stock forward takes what our replacement relies on, else why not."""
    params = inspect.signature(type(attn).forward).parameters
    if "cu_seqlens" not in params:
        return f"{type(attn).__name__}.forward has no cu_seqlens argument"
    if "position_embeddings" not in params and "rotary_pos_emb" not in params:
        return f"{type(attn).__name__}.forward takes neither position_embeddings nor rotary_pos_emb"
    if not all(hasattr(attn, a) for a in ("qkv", "proj", "num_heads")):
        return f"{type(attn).__name__} lacks qkv/proj/num_heads"
    if not hasattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb_vision"):
        return "transformers' apply_rotary_pos_emb_vision not found"
    return None


class _Lengths:
    """Window-length facts per cu_seqlens tensor, computed once per vision forward (the window and the full-
    attention cu_seqlens are each one tensor shared by all layers). Cleared at the start of every vision forward,
    so a reused allocation can never serve another batch's windows."""

    def __init__(self):
        self.values: dict = {}

    def get(self, cu_seqlens: torch.Tensor, backend: str):
        key = (cu_seqlens.data_ptr(), cu_seqlens.shape[0])
        if key not in self.values:
            cu = cu_seqlens.to(torch.int32)
            if backend == "varlen":
                self.values[key] = (cu, int((cu[1:] - cu[:-1]).max()))  # the one host sync, per forward
            else:  # block-diagonal boolean mask: token i may attend to j iff they share a window
                n = int(cu[-1])
                seg = torch.repeat_interleave(torch.arange(len(cu) - 1, device=cu.device), (cu[1:] - cu[:-1]).long(),
                                              output_size=n)
                self.values[key] = seg[:, None] == seg[None, :]
        return self.values[key]


def _fast_forward(backend: str, memo: _Lengths):
    def forward(self, hidden_states, cu_seqlens, rotary_pos_emb=None, position_embeddings=None, **kwargs):
        rotate = sys.modules[type(self).__module__].apply_rotary_pos_emb_vision
        n = hidden_states.shape[0]
        q, k, v = self.qkv(hidden_states).reshape(n, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        if position_embeddings is None:  # older transformers pass the raw rotary angles
            emb = torch.cat((rotary_pos_emb, rotary_pos_emb), dim=-1)
            position_embeddings = (emb.cos(), emb.sin())
        cos, sin = position_embeddings
        q, k = rotate(q, k, cos, sin)
        if backend == "varlen":
            from torch.nn.attention.varlen import varlen_attn

            cu, max_len = memo.get(cu_seqlens, backend)
            out = varlen_attn(q, k, v, cu, cu, max_len, max_len)  # (n, heads, head_dim)
        else:
            mask = memo.get(cu_seqlens, backend)
            out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                                 v.transpose(0, 1)[None], attn_mask=mask)[0].transpose(0, 1)
        return self.proj(out.reshape(n, -1).contiguous())
    return forward


def enable_fast_vision(model, backend: str = "auto", log=print) -> str | None:
    """Bind the one-call attention to every vision attention module of `model`. Returns the backend, or None
    (stock kept) when this transformers version does not fit."""
    attns = _vision_attention_modules(model)
    problem = _compatible(attns[0])
    if problem:
        warnings.warn(f"fast vision path disabled, stock attention kept: {problem}")
        return None
    chosen = choose_backend(next(model.parameters()).device, backend)
    memo = _Lengths()  # shared by the layers of one model: window and full-attention cu_seqlens alternate
    forward = _fast_forward(chosen, memo)
    for attn in attns:
        attn.forward = types.MethodType(forward, attn)
    visual = _visual(model)
    stock_visual_forward = visual.forward

    def visual_forward(*args, **kwargs):
        memo.values.clear()
        return stock_visual_forward(*args, **kwargs)
    visual.forward = visual_forward
    model._vla_fast_vision = chosen
    log(f"fast vision path: {chosen} attention over packed windows ({len(attns)} layers)")
    return chosen


def disable_fast_vision(model) -> None:
    for module in [*_vision_attention_modules(model), _visual(model)]:
        module.__dict__.pop("forward", None)
    model.__dict__.pop("_vla_fast_vision", None)
