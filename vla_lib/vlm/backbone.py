"""Loading the frozen VL backbone: a hub id or local path through `from_pretrained`, the tiny offline model, or the
published 3B architecture with random weights (GPU timing without a download)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from vla_lib.vlm.tiny_model import build_tiny_model, qwen25_vl_3b_config

# The image processor must not resize again what qwen_vl_utils already fitted to the budget: with min = max = budget
# on both, a 640x360 view becomes 616x336 (264 tokens) in qwen_vl_utils, and the processor would then *upscale* it to
# 672x364 (312 tokens) to reach min_pixels. So the processor keeps its floor as minimum and the budget as maximum.
PROCESSOR_MIN_PIXELS = 56 * 56


@dataclass
class Backbone:
    model: torch.nn.Module  # Qwen2_5_VLForConditionalGeneration, eval mode, frozen
    processor: object
    device: torch.device
    dtype: torch.dtype
    name: str
    fingerprint: str  # identity of the weights + config: part of every cache key
    pixel_budget: int
    fast: object = None  # a vlm.fast_vision.FastEncoder, or None: transformers' stock forward
    prep: object = None  # a vlm.gpu_prepare.DeviceImagePrep, or None: the CPU preparation (encode.prepare_inputs)

    @property
    def hidden_size(self) -> int:
        return self.model.config.text_config.hidden_size

    @property
    def config(self):
        return self.model.config


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
            "fp32": torch.float32, "float32": torch.float32}[name]


def load_backbone(cfg) -> Backbone:
    """`cfg` is a BackboneConfig."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    budget = cfg.image_resize_height * cfg.image_resize_width
    source = str(build_tiny_model(cfg.tiny_model_dir)) if cfg.name_or_path == "tiny" else cfg.name_or_path
    if cfg.random_weights:
        # Processor from the tiny model (tokenizer ids are set into the config); weights random, compute identical.
        processor = AutoProcessor.from_pretrained(build_tiny_model(cfg.tiny_model_dir))
        config = qwen25_vl_3b_config(processor.tokenizer)
        config._attn_implementation = cfg.attn_implementation
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    else:
        processor = AutoProcessor.from_pretrained(source, revision=cfg.revision)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            source, revision=cfg.revision, dtype=dtype, attn_implementation=cfg.attn_implementation).to(device)
    model.eval().requires_grad_(False)
    backbone = Backbone(model, processor, device, dtype, cfg.name_or_path, backbone_fingerprint(cfg), budget)
    set_pixel_budget(backbone, budget)
    from vla_lib.vlm.gpu_prepare import DeviceImagePrep, resolve_image_prep

    if resolve_image_prep(cfg.image_prep, device) == "gpu":
        backbone.prep = DeviceImagePrep(processor, device, dtype)
    if cfg.fast_vision != "off" and (cfg.fast_vision != "auto" or device.type == "cuda"):
        from vla_lib.vlm.fast_vision import enable_fast_vision

        cuda = device.type == "cuda"
        if cfg.fast_compile and cuda:
            from vla_lib.vlm.compile_cache import use_compile_cache

            use_compile_cache(cfg.compile_cache_dir)
        enable_fast_vision(backbone, cfg.fast_vision, compile=cfg.fast_compile and cuda,
                           cuda_graphs=cfg.fast_cuda_graphs and cuda, log=lambda *a: None)
    return backbone


def set_pixel_budget(backbone: Backbone, budget: int) -> None:
    """Pixels per view (qwen_vl_utils fits each image to it; the processor keeps its floor as minimum)."""
    backbone.processor.image_processor.size = {"shortest_edge": PROCESSOR_MIN_PIXELS, "longest_edge": budget}
    backbone.pixel_budget = budget


def backbone_fingerprint(cfg) -> str:
    """Identity of the backbone's weights and config, computed from files (training needs it without the model)."""
    if cfg.random_weights:
        return "random-qwen2.5-vl-3b"
    source = str(build_tiny_model(cfg.tiny_model_dir)) if cfg.name_or_path == "tiny" else cfg.name_or_path
    path = Path(source)
    if not path.is_dir():  # a hub id: the name and revision identify it
        return f"{source}@{cfg.revision or 'main'}"
    h = hashlib.sha1((path / "config.json").read_bytes())
    if path.is_dir():  # a local folder: the weights' bytes identify it (sizes + mtimes would miss a re-save)
        for f in sorted(path.glob("*.safetensors")):
            if f.stat().st_size < 64 * 2**20:
                h.update(f.read_bytes())
            else:
                h.update(json.dumps([f.name, f.stat().st_size, f.stat().st_mtime_ns]).encode())
    return f"{cfg.name_or_path}:{h.hexdigest()[:16]}"
