"""The Qwen2.5-VL backbone behind `vlm.interface.VLBackbone`: a hub id or local path through `from_pretrained`, the
tiny offline model, or Qwen2.5-VL-3B's architecture with random weights (GPU timing without a download)."""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from vla_lib.data.recorder_files import load_image
from vla_lib.vlm.interface import resolve_device, resolve_dtype
from vla_lib.vlm.qwen import encode_lm
from vla_lib.vlm.qwen.encode import encode, prepare_for, prepare_inputs
from vla_lib.vlm.qwen.gpu_prepare import DeviceImagePrep, decode_views, read_bytes, resolve_image_prep
from vla_lib.vlm.qwen.tiny_model import build_tiny_model, qwen25_vl_3b_config

# The image processor must not resize again what qwen_vl_utils already fitted to the budget: with min = max = budget
# on both, a 640x360 view becomes 616x336 (264 tokens) in qwen_vl_utils, and the processor would then *upscale* it to
# 672x364 (312 tokens) to reach min_pixels. So the processor keeps its floor as minimum and the budget as maximum.
PROCESSOR_MIN_PIXELS = 56 * 56
RANDOM_WEIGHTS_SEED = 0  # backbone.random_weights: every load draws these same weights


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

    # -- the VLBackbone interface ------------------------------------------------------------------------------
    def preparer(self):
        """The CPU preparation for DataLoader workers, or None when images are prepared on the device
        (`backbone.image_prep`: the workers then only read bytes, `prepare` runs here)."""
        if self.prep is not None:
            return None
        return partial(prepare_inputs, self.processor, pixel_budget=self.pixel_budget, pixel_dtype=self.dtype)

    def image_reader(self, decode_in_workers: bool = False):
        """What a worker makes of an image file: a decoded PIL image (CPU preparation), or its JPEG bytes (device
        preparation: nvJPEG decodes them), or libjpeg-decoded (3, H, W) uint8 when `decode_in_workers`."""
        if self.prep is None:
            return load_image
        return _decoded if decode_in_workers else read_bytes

    def prepare(self, samples):
        """The whole preparation in this process: on the device when the backbone prepares there (JPEG bytes too)."""
        return prepare_for(self, samples)

    def encode(self, inputs, pooling: str = "per_view") -> tuple[torch.Tensor, torch.Tensor]:
        return encode(self, inputs, pooling)

    def set_pixel_budget(self, budget: int) -> None:
        set_pixel_budget(self, budget)

    def parts(self) -> dict:
        return {"backbone": self.fingerprint, **processor_parts(self.processor), **_prep_part(self.prep is not None)}

    def describe(self) -> str:
        where = "images prepared on the device" if self.prep is not None else "images prepared on the CPU"
        return f"{where}, " + (f"fast encoder: {self.fast.describe()}" if self.fast is not None else "stock forward")

    def tokens_per_view(self, inputs) -> int:
        grid = inputs.batch["image_grid_thw"][0]
        return int(grid.prod() // self.config.vision_config.spatial_merge_size ** 2)

    @property
    def warmup_s(self) -> float:
        return self.fast.warmup_s if self.fast is not None else 0.0

    # -- Stage 2 (vlm.interface.Stage2Backbone): the LM with gradients, vision tokens per frame (encode_lm) ---------
    vision_scope = ".visual."  # where LoRA targets must not reach (stage2.lora: the vision tower stays frozen)
    lm_layer_scope = ".language_model.layers."  # the only modules Stage 2 runs with gradients

    def frame_grid(self, path) -> tuple[int, int, int]:
        vcfg = self.config.vision_config
        return encode_lm.frame_grid(path, self.pixel_budget, vcfg.patch_size, vcfg.spatial_merge_size)

    def grid_tokens(self, grid) -> int:
        t, h, w = grid
        return int(t * h * w) // self.config.vision_config.spatial_merge_size ** 2

    def vision_tokens(self, paths: list) -> list[torch.Tensor]:
        return encode_lm.frame_tokens(self.model, self.processor, paths, self.pixel_budget)

    def plan(self, samples, pooling: str = "per_view") -> encode_lm.LMPlan:
        return encode_lm.plan_from_grids(self.model, self.processor, samples, pooling, self.pixel_budget)

    def plan_from_pixels(self, samples, pooling: str = "per_view") -> tuple[encode_lm.LMPlan, torch.Tensor]:
        # the processor's batch of the whole prompts (not the frames alone): the vision tower sees what Stage 1's saw
        inputs = prepare_inputs(self.processor, samples, self.pixel_budget, next(self.model.parameters()).dtype)
        plan = encode_lm.plan_from_processor(self.model, inputs.batch, inputs.view_masks, pooling)
        return plan, encode_lm.vision_tokens(self.model, inputs.batch["pixel_values"], plan.grid_thw)

    def lm_features(self, model, plan, image_tokens, gradient_checkpointing: bool = False,
                    layer_fn=None) -> torch.Tensor:
        return encode_lm.lm_features(model, plan, image_tokens, gradient_checkpointing, layer_fn)

    def compiled_layer(self):
        return encode_lm.compiled_layer()

    def set_model(self, model) -> None:
        """`model` (an adapter loaded onto this one) from now on, frozen; the fast encoder, which holds the model and
        copies of its vision weights, rebuilt around it."""
        self.model = model.eval().requires_grad_(False)
        if self.fast is not None:
            from vla_lib.vlm.qwen.fast_vision import FastEncoder

            fast = self.fast
            self.fast = FastEncoder(model, fast.backend, compile=fast.compiled, cuda_graphs=fast.cuda_graphs)


def load_backbone(cfg) -> Backbone:
    """`cfg` is a BackboneConfig."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    budget = cfg.image_resize_height * cfg.image_resize_width
    source = backbone_source(cfg)
    if cfg.random_weights:
        # Processor from the tiny model (tokenizer ids are set into the config); weights random, compute identical.
        processor = AutoProcessor.from_pretrained(source)
        config = qwen25_vl_3b_config(processor.tokenizer)
        config._attn_implementation = cfg.attn_implementation
        # the same random weights at every load (seeded, the caller's RNG untouched): the cache build, Stage 2 and
        # the policy then see one backbone, which is what the fingerprint below claims
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.device(device):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    else:
        processor = _from_pretrained(AutoProcessor, source, revision=cfg.revision)
        model = _from_pretrained(Qwen2_5_VLForConditionalGeneration, source, revision=cfg.revision, dtype=dtype,
                                 attn_implementation=cfg.attn_implementation).to(device)
    model.eval().requires_grad_(False)
    backbone = Backbone(model, processor, device, dtype, display_name(cfg), backbone_fingerprint(cfg), budget)
    set_pixel_budget(backbone, budget)
    if resolve_image_prep(cfg.image_prep, device) == "gpu":
        backbone.prep = DeviceImagePrep(processor, device, dtype)
    if cfg.fast_vision != "off" and (cfg.fast_vision != "auto" or device.type == "cuda"):
        from vla_lib.vlm.qwen.fast_vision import enable_fast_vision

        cuda = device.type == "cuda"
        if cfg.fast_compile and cuda:
            from vla_lib.vlm.qwen.compile_cache import use_compile_cache

            use_compile_cache(cfg.compile_cache_dir)
        enable_fast_vision(backbone, cfg.fast_vision, compile=cfg.fast_compile and cuda,
                           cuda_graphs=cfg.fast_cuda_graphs and cuda, log=lambda *a: None)
    return backbone


def display_name(cfg) -> str:
    """What banners and metrics call the backbone `cfg` names: random weights are the 3B architecture, whatever
    folder the processor comes from (its name, "tiny", said the wrong model)."""
    if cfg.random_weights:
        return "Qwen2.5-VL-3B architecture (random weights)"
    return cfg.name_or_path


def _from_pretrained(cls, source: str, **kwargs):
    """`cls.from_pretrained`, with a hub id that cannot be reached (no network, no local copy) or a folder that
    holds no model turned into one line saying what fixes it, instead of transformers' traceback."""
    from vla_lib.errors import ConfigError

    try:
        return cls.from_pretrained(source, **kwargs)
    except OSError as e:
        where = "a local folder" if Path(source).is_dir() else "a hub id"
        raise ConfigError(
            f"backbone.name_or_path {source!r} ({where}) could not be loaded by {cls.__name__}: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}. Without network, download it once where "
            f"there is one (`hf download {source} --local-dir DIR`) and set backbone.name_or_path to DIR "
            "(--model DIR); for timing only, --random-weights runs the 3B architecture without a download") from None


def set_pixel_budget(backbone: Backbone, budget: int) -> None:
    """Pixels per view (qwen_vl_utils fits each image to it; the processor keeps its floor as minimum)."""
    backbone.processor.image_processor.size = {"shortest_edge": PROCESSOR_MIN_PIXELS, "longest_edge": budget}
    backbone.pixel_budget = budget


# Processor fields that the pixel budget sets (it is its own part of the fingerprint); everything else the image
# processor holds (patch size, merge size, mean/std, resample, ...) is hashed.
_BUDGET_FIELDS = ("size", "min_pixels", "max_pixels")


def processor_parts(processor) -> dict:
    """What of the processor and its libraries changes a feature: the chat template, the image processor's
    configuration (the budget aside), and the transformers and qwen-vl-utils versions (they resize)."""
    image_config = {k: v for k, v in processor.image_processor.to_dict().items() if k not in _BUDGET_FIELDS}
    return {"chat_template": _sha(processor.chat_template),
            "image_processor": _sha(json.dumps(image_config, sort_keys=True, default=str)),
            "versions": {name: _version(name) for name in ("transformers", "qwen-vl-utils")}}


def parts(cfg) -> dict:
    """What identifies the features of the backbone `cfg` names, without loading its weights (the processor only)."""
    from transformers import AutoProcessor

    processor = _from_pretrained(AutoProcessor, backbone_source(cfg), revision=cfg.revision)
    on_device = resolve_image_prep(cfg.image_prep, resolve_device(cfg.device)) == "gpu"
    return {"backbone": backbone_fingerprint(cfg), **processor_parts(processor), **_prep_part(on_device)}


def _prep_part(on_device: bool) -> dict:
    # Device-prepared pixels differ slightly from the CPU path's (nvJPEG, the resize kernel): their own store;
    # CPU-prepared stores keep their key.
    return {"image_prep": "gpu"} if on_device else {}


def _decoded(path):
    return decode_views([read_bytes(path)], "cpu")[0]


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def backbone_source(cfg) -> str:
    """Where `from_pretrained` loads the processor (and weights) from: the tiny model's folder (built on demand) for
    "tiny" and for `random_weights` (whose processor and token ids come from it), else the hub id or local path."""
    if cfg.name_or_path == "tiny" or cfg.random_weights:
        return str(build_tiny_model(cfg.tiny_model_dir))
    return cfg.name_or_path


def backbone_fingerprint(cfg) -> str:
    """Identity of the backbone's weights and config, computed from files (training needs it without the model)."""
    if cfg.random_weights:
        return f"random-qwen2.5-vl-3b-seed{RANDOM_WEIGHTS_SEED}"
    source = backbone_source(cfg)
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
