"""A fast encoder for Qwen2.5-VL: the same function as `model.model(...)`, reorganised for the GPU.

Where the stock forward loses its time (profiled on an H100, 5 views of 264 tokens, transformers 5.17):
- the vision tower's windowed attention is a Python loop, one attention call per window (~120 a sample x 28 layers),
  for every implementation but flash-attn;
- data-dependent set-up (rotary positions, window index, 3-D LM positions, the causal-mask checks, our pooling)
  makes host syncs on the GPU every forward;
- at batch 1, 70 of the 98 ms are kernels, most of them the fp32 casts and element-wise ops around the matmuls
  (RMSNorm, vision rotary, SiLU gate): unfused, each one a pass over memory.

What this module does instead, for *one* model instance (nothing is patched: the model's own modules are called,
its forwards stay stock, and another instance or `model.model(...)` behaves as before):
- `plan_layout`: everything that depends only on the batch's layout (vision positions and windows via transformers'
  own `vision_utils`, the LM's 3-D positions via the model's `get_rope_index`, the padding mask, the pooling weights)
  is computed on the CPU from the processor's CPU tensors, before anything reaches the GPU;
- one attention call per vision layer over all windows of all images of the batch: `varlen` (flash kernels
  bundled with torch >= 2.10, CUDA) or `masked_sdpa` (one SDPA call with a block-diagonal mask: the CPU
  fallback and the reference for the logic);
- the patch embedding as the matrix product it is (a Conv3d whose stride equals its kernel: 0.06 ms against
  0.75 ms for cuDNN's bf16 Conv3d at batch 1);
- the vision MLP on zero-padded copies of its weights (see MLP_PAD): 41.2 -> 31.4 ms for a batch-1 update;
- `compile`: each vision block and each LM decoder layer through one `torch.compile`d function (regional
  compilation: identical layers share one compiled graph, so compiling costs one block, not 68), which fuses the
  element-wise work;
- `cuda_graphs`: the whole forward (vision, LM, pooling) captured once per layout shape and replayed: the layout's
  tensors are graph inputs, copied into static buffers, so only shapes and the two window maxima are baked in.

An unknown transformers version (no `vision_utils`, a different module layout) keeps the stock forward and says so.
"""
from __future__ import annotations

import inspect
import sys
import time
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vla_lib.vlm.qwen.lm_layers import causal_mask, lm_layer

BACKENDS = ("varlen", "masked_sdpa")
# Layouts captured per encoder. The graphs share one memory pool for their intermediates (each output is copied out
# right after its replay), so a graph costs its static inputs and output only: ~12 MB for 5 views at batch 1.
MAX_GRAPHS = 32
# The vision MLP's width (3420 in Qwen2.5-VL) is no multiple of 8, so cuBLAS runs its products on sm80 kernels at
# ~200 TFLOP/s: 48 % of the kernel time of a batch-1 update on an H100 (profiled). The encoder keeps
# copies of those weights padded with zeros to a multiple of MLP_PAD (gate and up stacked into one product): the same
# function exactly (the padded gate and up outputs are 0, act(0) * 0 = 0, and the padded down columns are 0), at the
# cost of one more copy of the vision MLP weights (~0.85 GB in bf16 for the 3B model).
MLP_PAD = 128


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


def incompatibility(model) -> str | None:
    """None if this transformers version has what the fast encoder relies on, else why not."""
    try:
        from transformers import vision_utils  # noqa: F401  (5.x: precomputable vision layout)
    except ImportError:
        return "transformers has no vision_utils (precomputed vision layout needs transformers >= 5.17)"
    inner = model.model
    visual, lm = inner.visual, inner.language_model
    blk = visual.blocks[0]
    needs = {"visual.blocks[0]": (blk, ("norm1", "norm2", "attn", "mlp")),
             "visual.blocks[0].attn": (blk.attn, ("qkv", "proj", "num_heads")),
             "visual": (visual, ("patch_embed", "rotary_pos_emb", "merger", "fullatt_block_indexes",
                                 "spatial_merge_unit")),
             "language_model": (lm, ("embed_tokens", "layers", "norm", "rotary_emb"))}
    for name, (obj, attrs) in needs.items():
        if missing := [a for a in attrs if not hasattr(obj, a)]:
            return f"{name} lacks {missing}"
    if getattr(lm, "has_sliding_layers", False):
        return "sliding-window LM layers are not supported"
    if "mm_token_type_ids" not in inspect.signature(inner.get_rope_index).parameters:
        return "get_rope_index does not take mm_token_type_ids"
    if not hasattr(sys.modules[type(blk.attn).__module__], "apply_rotary_pos_emb_vision"):
        return "transformers' apply_rotary_pos_emb_vision not found"
    if visual.patch_embed.proj.bias is not None:
        return "patch embedding has a bias"
    return None


# -- the layout: computed on the CPU ---------------------------------------------------------------------------------
@dataclass
class Layout:
    """Everything about a batch that does not depend on pixel values. `tensors` travel to the device (graph
    inputs, token ids included); `shape_key` is what a captured graph is specialised on."""

    tensors: dict
    max_window: int
    max_full: int

    @property
    def shape_key(self) -> tuple:
        return tuple((k, tuple(v.shape)) for k, v in self.tensors.items()) + (self.max_window, self.max_full)


def _longest(cu: torch.Tensor) -> int:
    return int((cu[1:] - cu[:-1]).max())


def plan_layout(model, batch: dict, pool_weights: torch.Tensor) -> Layout:
    """`batch`: the processor's output (CPU tensors); `pool_weights`: (B, T, L) from encode.pooling_weights."""
    from transformers.vision_utils import (get_vision_attention_seqlens, get_vision_position_ids,
                                           get_vision_window_index)

    inner, vcfg = model.model, model.config.vision_config
    ids, mask = batch["input_ids"].cpu(), batch["attention_mask"].cpu()
    # A batch whose inputs all have every view masked (a session's first anchors, before any camera frame) has no
    # images: the processor then gives no image_grid_thw, and the layout has no vision part (the LM runs alone).
    grid = batch.get("image_grid_thw")
    grid = grid.cpu() if grid is not None else None
    positions, _ = inner.get_rope_index(ids, batch["mm_token_type_ids"].cpu(), image_grid_thw=grid,
                                        attention_mask=mask)
    image_rows = torch.nonzero((ids == model.config.image_token_id).flatten()).squeeze(-1)
    tensors = {"input_ids": ids, "lm_positions": positions, "image_rows": image_rows,
               "pool_weights": pool_weights.float()}
    longest = (0, 0)
    if grid is not None:
        vpos = get_vision_position_ids(grid, vcfg.spatial_merge_size)
        cu_full, _ = get_vision_attention_seqlens(grid, vcfg)
        window_index, cu_window = get_vision_window_index(grid, spatial_merge_size=vcfg.spatial_merge_size,
                                                          window_size=vcfg.window_size, patch_size=vcfg.patch_size)
        tensors |= {"vision_positions": vpos, "window_index": window_index,
                    "reverse_index": torch.argsort(window_index), "cu_full": cu_full.to(torch.int32),
                    "cu_window": cu_window.to(torch.int32)}
        longest = (_longest(cu_window), _longest(cu_full))
    elif len(image_rows):
        raise ValueError("the batch has image tokens but no image_grid_thw")
    # Without padding, SDPA's own causal flag (flash kernels) needs no mask; otherwise the forward builds one on the
    # device from the (B, L) validity (a (B, 1, L, L) mask would be 59 MB to copy at batch 16).
    if not bool(mask.all()) or model.config.text_config._attn_implementation != "sdpa":
        tensors["lm_valid"] = mask.bool()
    return Layout(tensors, *longest)


# -- the forward: device work only, no host syncs -------------------------------------------------------------------
def _attend(backend, q, k, v, cu, max_len, block_mask):
    if backend == "varlen":
        from torch.nn.attention.varlen import varlen_attn

        return varlen_attn(q, k, v, cu, cu, max_len, max_len)  # (n, heads, head_dim)
    return F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                          attn_mask=block_mask)[0].transpose(0, 1)


def _vision_block(blk, h, cos, sin, cu, max_len, block_mask, backend: str, rotate, mlp=None):
    attn = blk.attn
    x = blk.norm1(h)
    n = x.shape[0]
    q, k, v = attn.qkv(x).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = rotate(q, k, cos, sin)  # v made contiguous here, fused, rather than by the attention kernel's own copy
    h = h + attn.proj(_attend(backend, q, k, v.contiguous(), cu, max_len, block_mask).reshape(n, -1))
    if mlp is None:
        return h + blk.mlp(blk.norm2(h))
    gate_up, bias, down, down_bias = mlp  # padded copies (see MLP_PAD)
    gate, up = F.linear(blk.norm2(h), gate_up, bias).chunk(2, dim=-1)
    return h + F.linear(blk.mlp.act_fn(gate) * up, down, down_bias)


@torch.no_grad()
def padded_mlps(visual, multiple: int = MLP_PAD) -> list | None:
    """Per vision block (gate+up stacked, its bias, down, down's bias), the width padded with zeros to `multiple`;
    None when the width is a multiple already or the MLP is not the gate/up/down form with act(0) = 0."""
    mlp = visual.blocks[0].mlp
    if not all(hasattr(mlp, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return None
    width = mlp.gate_proj.out_features
    w = mlp.gate_proj.weight
    if width % multiple == 0 or float(mlp.act_fn(torch.zeros(1, dtype=w.dtype, device=w.device))) != 0.0:
        return None
    padded = -(-width // multiple) * multiple
    out = []
    for blk in visual.blocks:
        m = blk.mlp
        gate_up = w.new_zeros(2 * padded, w.shape[1])
        gate_up[:width], gate_up[padded:padded + width] = m.gate_proj.weight, m.up_proj.weight
        bias = None
        if m.gate_proj.bias is not None:
            bias = w.new_zeros(2 * padded)
            bias[:width], bias[padded:padded + width] = m.gate_proj.bias, m.up_proj.bias
        down = w.new_zeros(m.down_proj.weight.shape[0], padded)
        down[:, :width] = m.down_proj.weight
        out.append((gate_up, bias, down, m.down_proj.bias))
    return out


def _block_mask(cu: torch.Tensor, n: int) -> torch.Tensor:
    seg = torch.repeat_interleave(torch.arange(len(cu) - 1, device=cu.device), (cu[1:] - cu[:-1]).long(),
                                  output_size=n)
    return seg[:, None] == seg[None, :]


class FastEncoder:
    """`encoder(pixel_values, layout)` -> last-layer states pooled by the layout's weights, (B, T, D) float32."""

    def __init__(self, model, backend: str = "auto", compile: bool = False, cuda_graphs: bool = False):
        self.model = model
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.backend = choose_backend(self.device, backend)
        on_cuda = self.device.type == "cuda"
        self.compiled = compile
        self.cuda_graphs = cuda_graphs and on_cuda
        visual = model.model.visual
        self.rotate = sys.modules[type(visual.blocks[0].attn).__module__].apply_rotary_pos_emb_vision
        # Conv3d with stride == kernel over flattened patches is a matrix product with the flattened kernel.
        self.patch_weight = visual.patch_embed.proj.weight.reshape(visual.patch_embed.proj.weight.shape[0], -1)
        self.vision_block, self.lm_layer = _vision_block, lm_layer
        self.mlps = padded_mlps(visual)  # copies made now: the backbone is frozen (make a new encoder after a change)
        if compile:  # dynamic from the start: one compilation serves every batch size and prompt length
            self.vision_block = torch.compile(_vision_block, dynamic=True)
            self.lm_layer = torch.compile(lm_layer, dynamic=True)
        self.graphs: dict = {}  # one captured graph per layout shape
        self.warmup_s = 0.0  # spent compiling and capturing: one-off costs, reported apart from throughput
        self._pool = None

    def describe(self) -> str:
        return (f"{self.backend} attention over packed windows, layout precomputed on the CPU"
                + (", vision MLP padded to a multiple of %d" % MLP_PAD if self.mlps else "")
                + (", blocks compiled" if self.compiled else "") + (", CUDA graph per layout" if self.cuda_graphs
                                                                    else ""))

    def forward(self, pixel_values: torch.Tensor | None, t: dict, max_window: int, max_full: int) -> torch.Tensor:
        """Pure device work over device tensors `t` (a Layout's tensors): capturable in a CUDA graph."""
        inner = self.model.model
        lm = inner.language_model
        image = self._vision(pixel_values, t, max_window, max_full) if "window_index" in t else None
        ids = t["input_ids"]
        b, length = ids.shape
        x = lm.embed_tokens(ids)
        if image is not None:
            x = x.view(b * length, -1).index_copy(0, t["image_rows"], image.to(x.dtype)).view(b, length, -1)
        position_embeddings = lm.rotary_emb(x, t["lm_positions"])
        mask = causal_mask(t["lm_valid"], x.dtype) if "lm_valid" in t else None  # None: SDPA's causal flag
        for layer in lm.layers:
            x = self.lm_layer(layer, x, mask, position_embeddings)
        x = lm.norm(x)
        return torch.bmm(t["pool_weights"], x.float())

    def _vision(self, pixel_values: torch.Tensor, t: dict, max_window: int, max_full: int) -> torch.Tensor:
        """The vision tower over all images of the batch: merged image tokens in the processor's order."""
        visual = self.model.model.visual
        unit = visual.spatial_merge_unit
        h = F.linear(pixel_values.to(self.dtype), self.patch_weight)
        n, width = h.shape
        window = t["window_index"]
        h = h.view(n // unit, unit, width)[window].view(n, width)
        cos, sin = (f.view(n // unit, unit, -1)[window].view(n, -1)
                    for f in visual.rotary_pos_emb(h, t["vision_positions"]))
        masks = ((None, None) if self.backend == "varlen" else
                 (_block_mask(t["cu_window"], n), _block_mask(t["cu_full"], n)))
        for i, blk in enumerate(visual.blocks):
            full = i in visual.fullatt_block_indexes
            h = self.vision_block(blk, h, cos, sin, t["cu_full"] if full else t["cu_window"],
                                  max_full if full else max_window, masks[1] if full else masks[0], self.backend,
                                  self.rotate, self.mlps[i] if self.mlps else None)
        return visual.merger(h)[t["reverse_index"]]

    @torch.inference_mode()
    def __call__(self, pixel_values: torch.Tensor | None, layout: Layout) -> torch.Tensor:
        """`pixel_values` None: a batch without images (its layout has no vision part)."""
        # The layout's small tensors go through page-locked memory: a copy from pageable memory may wait for the
        # stream (the previous batch), and the GPU would then idle while the host plans the next batch.
        tensors = {k: v.pin_memory() if self.device.type == "cuda" else v for k, v in layout.tensors.items()}
        graph = self._graph_for(pixel_values, layout) if self.cuda_graphs else None
        if graph is None:
            t = {k: v.to(self.device, non_blocking=True) for k, v in tensors.items()}
            pixels = pixel_values.to(self.device, non_blocking=True) if pixel_values is not None else None
            return self.forward(pixels, t, layout.max_window, layout.max_full)
        if pixel_values is not None:
            graph["pixel_values"].copy_(pixel_values, non_blocking=True)
        for k, v in tensors.items():
            graph["inputs"][k].copy_(v, non_blocking=True)
        graph["graph"].replay()
        return graph["output"].clone()

    def _graph_for(self, pixel_values, layout) -> dict | None:
        """The captured graph for this layout's shapes; None (run eagerly) once MAX_GRAPHS shapes were seen."""
        graph = self.graphs.get(layout.shape_key)
        if graph is None and len(self.graphs) < MAX_GRAPHS:
            graph = self._capture(pixel_values, layout)
        return graph

    def _capture(self, pixel_values, layout) -> dict:
        """Warm up (compiles, cuDNN/flash set-up) on a side stream, then capture; one memory pool for all layouts
        (never run concurrently)."""
        start = time.perf_counter()
        static_pixels = pixel_values.to(self.device, dtype=self.dtype) if pixel_values is not None else None
        inputs = {k: v.to(self.device) for k, v in layout.tensors.items()}
        run = lambda: self.forward(static_pixels, inputs, layout.max_window, layout.max_full)  # noqa: E731
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                run()
        torch.cuda.current_stream().wait_stream(side)
        self._pool = self._pool or torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # thread_local: another thread's CUDA call during the capture (a DataLoader's pin-memory thread allocating
        # page-locked memory, the real-time loop's action step) must not invalidate it; seen on an H100.
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            output = run()
        entry = {"graph": graph, "pixel_values": static_pixels, "inputs": inputs, "output": output}
        self.graphs[layout.shape_key] = entry
        self.warmup_s += time.perf_counter() - start
        return entry


def enable_fast_vision(backbone, backend: str = "auto", compile: bool = False, cuda_graphs: bool = False,
                       log=print) -> str | None:
    """Give `backbone` (a vlm.backbone.Backbone) a FastEncoder. Returns the attention backend, or None (stock
    kept, with a warning saying why) when this transformers version does not fit."""
    if problem := incompatibility(backbone.model):
        warnings.warn(f"fast vision path disabled, stock forward kept: {problem}")
        backbone.fast = None
        return None
    backbone.fast = FastEncoder(backbone.model, backend, compile=compile, cuda_graphs=cuda_graphs)
    log(f"fast VL encoder: {backbone.fast.describe()}")
    return backbone.fast.backend


def disable_fast_vision(backbone) -> None:
    backbone.fast = None
