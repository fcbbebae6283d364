"""Image preparation on the device: JPEG bytes or uint8 frames -> the image processor's `pixel_values`, batched.

The CPU path (`encode.prepare_inputs`: qwen_vl_utils decodes with PIL and resizes each view to the pixel budget with
PIL's bicubic filter, then the Qwen2-VL image processor rescales, normalises and lays out the patches) stays the
reference and the CPU default. This path does the same steps on the backbone's device, all views of a batch at once:

- decode: JPEG bytes through `torchvision.io.decode_jpeg` (nvJPEG on CUDA, one batched call; libjpeg on the CPU);
  other encodings through `decode_image` on the CPU; uint8 frames (numpy HxWx3, PIL, torch 3xHxW) are copied up;
- resize: to the size qwen_vl_utils' own `smart_resize` gives for the budget (min = max = budget, as the message path
  asks), then the image processor's own `smart_resize` on top (its floor and maximum; the identity for the sizes the
  first one gives); bicubic with antialiasing (`F.interpolate(..., antialias=True)`, the same a = -0.5 kernel as
  PIL), in PIL's order: horizontal pass, rounded and clipped to 0..255, then vertical, rounded and clipped. One call
  per pass and distinct source size;
- rescale and normalise with the processor's own `rescale_factor`, `image_mean`, `image_std`;
- the processor's patch layout (its flatten order: merge blocks, then channel, temporal copy, patch row, column),
  with the processor's `patch_size`, `temporal_patch_size`, `merge_size`; pixels in the backbone's dtype.

The token grid is the processor's exactly. Pixel values differ from the CPU path by the resize kernel's arithmetic
(PIL's coefficients are fixed point; here float32): almost every pixel identical, none more than 2 levels of 255 apart
(tests/vlm/test_gpu_prepare.py). From JPEGs on CUDA, nvJPEG decodes differently from libjpeg (PIL's decoder), most
at sharp colour edges (its chroma upsampling differs): benchmarks/vl_end_to_end.py measures it; `jpeg_on_device=False`
decodes with libjpeg on the CPU instead (then the pixels are the CPU path's to within the tolerance above). The text side (chat template, tokens with the image pads, attention mask, grids) depends only on the
instructions and the image sizes: it is computed once per (instructions, view sets, sizes) through the processor
itself and reused, with the pooling weights and the fast encoder's layout planned from it.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_PREPS = ("auto", "cpu", "gpu")
_JPEG_MAGIC = b"\xff\xd8"


def resolve_image_prep(name: str, device: torch.device) -> str:
    """auto = on the device when it is a GPU, the CPU reference path otherwise."""
    if name not in IMAGE_PREPS:
        raise ValueError(f"backbone.image_prep must be one of {IMAGE_PREPS}, got {name!r}")
    if name == "auto":
        return "gpu" if torch.device(device).type == "cuda" else "cpu"
    return name


@dataclass(frozen=True)
class PatchSpec:
    """What the image processor does to a fitted image, read from the loaded processor (nothing hard-coded)."""

    mean: tuple
    std: tuple
    rescale: float
    patch: int
    temporal: int
    merge: int
    min_pixels: int
    max_pixels: int

    @classmethod
    def from_processor(cls, processor) -> "PatchSpec":
        ip = processor.image_processor
        size = ip.size if isinstance(ip.size, dict) else dict(ip.size)
        if not (ip.do_rescale and ip.do_normalize):
            raise ValueError("image preparation on the device expects a processor that rescales and normalises")
        return cls(tuple(float(v) for v in ip.image_mean), tuple(float(v) for v in ip.image_std),
                   float(ip.rescale_factor), int(ip.patch_size), int(ip.temporal_patch_size), int(ip.merge_size),
                   int(size["shortest_edge"]), int(size["longest_edge"]))

    @property
    def factor(self) -> int:
        return self.patch * self.merge


def fitted_sizes(height: int, width: int, budget: int, spec: PatchSpec) -> list[tuple[int, int]]:
    """The sizes the CPU path resizes through: qwen_vl_utils' fit to the budget, then the processor's own fit (the
    identity unless its bounds say otherwise: then a second resize, as the processor would do)."""
    from qwen_vl_utils import smart_resize as fit_to_budget
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as processor_fit

    first = fit_to_budget(height, width, factor=spec.factor, min_pixels=budget, max_pixels=budget)
    second = processor_fit(*first, factor=spec.factor, min_pixels=spec.min_pixels, max_pixels=spec.max_pixels)
    return [first] if tuple(second) == tuple(first) else [first, tuple(second)]


def resize_uint8_range(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 3, H, W) float in 0..255 -> (N, 3, h, w): bicubic with antialiasing, as PIL does it: the horizontal pass,
    rounded and clipped to uint8, then the vertical pass, rounded and clipped (one 2-D pass differs by up to ~8
    levels at hard edges, where the first pass overshoots and PIL clips). The identity when the size matches."""
    h, w = size
    if x.shape[-1] != w:
        x = F.interpolate(x, size=(x.shape[-2], w), mode="bicubic", antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255)
    if x.shape[-2] != h:
        x = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255)
    return x


def patchify(x: torch.Tensor, spec: PatchSpec) -> torch.Tensor:
    """(N, C, H, W) -> (N * H/p * W/p, C * temporal * p * p) in the image processor's flatten order: per image, the
    merge x merge blocks row by row, inside each its patches row by row; per patch channel, temporal copy (a still
    image is repeated `temporal` times), patch row, patch column."""
    n, c, h, w = x.shape
    p, m, t = spec.patch, spec.merge, spec.temporal
    if h % (p * m) or w % (p * m):
        raise ValueError(f"image {h}x{w} is not a multiple of patch x merge = {p * m}")
    gh, gw = h // p, w // p
    x = x.reshape(n, c, gh // m, m, p, gw // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)
    x = x.unsqueeze(6).expand(n, gh // m, gw // m, m, m, c, t, p, p)
    return x.reshape(n * gh * gw, c * t * p * p)


def _is_encoded(im) -> bool:
    return isinstance(im, (bytes, bytearray, memoryview, str, Path))


def read_bytes(im) -> bytes:
    """Paths are read here (the cache build's workers do this and nothing else); bytes pass through."""
    if isinstance(im, (str, Path)):
        return Path(im).read_bytes()
    return bytes(im)


def _to_chw_uint8(im) -> torch.Tensor:
    """A decoded frame as a (3, H, W) uint8 CPU or device tensor."""
    from PIL import Image

    if isinstance(im, Image.Image):
        from qwen_vl_utils.vision_process import to_rgb  # RGBA on white, as the CPU path

        im = np.asarray(to_rgb(im))
    if isinstance(im, np.ndarray):
        if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
            raise ValueError(f"a frame must be HxWx3 uint8, got {im.dtype} {im.shape}")
        return torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)
    if isinstance(im, torch.Tensor):
        if im.dtype != torch.uint8 or im.ndim != 3 or im.shape[0] != 3:
            raise ValueError(f"a frame tensor must be 3xHxW uint8, got {im.dtype} {tuple(im.shape)}")
        return im
    raise TypeError(f"unsupported image type {type(im).__name__}")


def decode_views(images: list, device: torch.device, jpeg_on_device: bool = True) -> list[torch.Tensor]:
    """Any mix of JPEG/PNG bytes, paths, uint8 frames -> (3, H, W) uint8 tensors on `device`, in order. JPEGs are
    decoded in one batched call on the device (nvJPEG on CUDA), or with `jpeg_on_device=False` by libjpeg on the CPU
    (PIL's decoder: the CPU path's pixels exactly) and copied up."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    device = torch.device(device)
    jpeg_device = device if jpeg_on_device else torch.device("cpu")
    out: list = [None] * len(images)
    jpeg_at, jpegs = [], []
    for k, im in enumerate(images):
        if _is_encoded(im):
            data = torch.frombuffer(bytearray(read_bytes(im)), dtype=torch.uint8)
            if bytes(data[:2].numpy()) == _JPEG_MAGIC:
                jpeg_at.append(k), jpegs.append(data)
            else:  # PNG and the rest: the CPU decoder
                out[k] = decode_image(data, mode=ImageReadMode.RGB).to(device, non_blocking=True)
        else:
            frame = _to_chw_uint8(im)
            if frame.device.type == "cpu" and device.type == "cuda" and not frame.is_pinned():
                frame = frame.pin_memory()
            out[k] = frame.to(device, non_blocking=True)
    if jpegs:
        decoded = decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=jpeg_device)
        for k, frame in zip(jpeg_at, decoded):
            if frame.device.type == "cpu" and device.type == "cuda":
                frame = frame.pin_memory().to(device, non_blocking=True)
            out[k] = frame
    return out


_AFFINE: dict = {}


def _affine(spec: PatchSpec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rescale + normalise as one multiply-add, (1, C, 1, 1) each, made once per device: a fresh small tensor from a
    Python list is a copy from pageable memory, which would hold the host until the device's queue drains."""
    key = (spec.rescale, spec.mean, spec.std, str(device))
    if key not in _AFFINE:
        _AFFINE[key] = (torch.tensor([spec.rescale / s for s in spec.std], device=device).view(1, -1, 1, 1),
                        torch.tensor([-m / s for m, s in zip(spec.mean, spec.std)], device=device).view(1, -1, 1, 1))
    return _AFFINE[key]


def prepare_pixels(frames: list[torch.Tensor], budget: int, spec: PatchSpec,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """(3, H, W) uint8 frames (one device) -> (pixel_values (patches, C*t*p*p) in `dtype`, fitted (h, w) per
    frame). Frames of one source size are resized, normalised and laid out together."""
    if not frames:
        raise ValueError("no frames")
    scale, shift = _affine(spec, frames[0].device)
    groups: dict[tuple, list[int]] = {}
    for k, f in enumerate(frames):
        groups.setdefault(tuple(f.shape[-2:]), []).append(k)
    parts: list = [None] * len(frames)
    sizes: list = [None] * len(frames)
    for (h, w), ks in groups.items():
        x = torch.stack([frames[k] for k in ks]).float()
        for size in fitted_sizes(h, w, budget, spec):
            x = resize_uint8_range(x, size)
        x = torch.addcmul(shift, x, scale).to(dtype)
        flat = patchify(x, spec)
        per = flat.shape[0] // len(ks)
        for j, k in enumerate(ks):
            parts[k], sizes[k] = flat[j * per:(j + 1) * per], tuple(x.shape[-2:])
    return (parts[0] if len(parts) == 1 else torch.cat(parts)), sizes


class _TextSide:
    """The processor's non-pixel outputs for one (instructions, view sets, image sizes) key, plus what `encode` plans
    from them (pooling weights, the fast encoder's layout), kept for reuse."""

    def __init__(self, batch: dict, view_masks: torch.Tensor):
        self.batch, self.view_masks, self.plans = batch, view_masks, {}


class DeviceImagePrep:
    """`prep(samples)` -> encode.EncoderInputs with pixel values already on the backbone's device.

    `samples`: (present images in slot order, instruction, view mask over all slots), as `encode.prepare_inputs`;
    images may be JPEG/PNG bytes, paths, HxWx3 uint8 arrays, PIL images or 3xHxW uint8 tensors."""

    def __init__(self, processor, device, dtype: torch.dtype, max_text_sides: int = 64, jpeg_on_device: bool = True):
        self.processor = processor
        self.jpeg_on_device = jpeg_on_device
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_text_sides = max_text_sides
        self._text: OrderedDict = OrderedDict()

    def __call__(self, samples: list[tuple[list, str, list[bool]]], pixel_budget: int):
        from vla_lib.vlm.qwen.encode import EncoderInputs

        spec = PatchSpec.from_processor(self.processor)  # read per call: set_pixel_budget changes the processor
        images = [im for ims, _, _ in samples for im in ims]
        pixel_values, sizes = (prepare_pixels(decode_views(images, self.device, self.jpeg_on_device), pixel_budget,
                                              spec, self.dtype)
                               if images else (None, []))
        key, k = [pixel_budget, spec], 0
        for ims, instruction, mask in samples:
            key.append((instruction, tuple(bool(m) for m in mask), tuple(sizes[k:k + len(ims)])))
            k += len(ims)
        text = self.text_side(tuple(key))
        batch = dict(text.batch)
        if pixel_values is not None:
            batch["pixel_values"] = pixel_values
        return EncoderInputs(batch, text.view_masks, plans=text.plans)

    def text_side(self, key: tuple) -> _TextSide:
        """Through the processor itself, once per key (blank images of the fitted sizes: their grids are the same)."""
        if (hit := self._text.get(key)) is not None:
            self._text.move_to_end(key)
            return hit
        from vla_lib.vlm.qwen.encode import build_messages

        budget, spec, *samples = key
        texts, blanks, grids = [], [], []
        for instruction, _, sizes in samples:
            messages = build_messages([None] * len(sizes), instruction, budget)
            texts.append(self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False))
            blanks += [np.zeros((h, w, 3), np.uint8) for h, w in sizes]
            grids += [[1, h // spec.patch, w // spec.patch] for h, w in sizes]
        batch = dict(self.processor(text=texts, images=blanks or None, padding=True, return_tensors="pt"))
        batch.pop("pixel_values", None)
        if blanks and batch["image_grid_thw"].tolist() != grids:
            raise RuntimeError(f"the processor's grids {batch['image_grid_thw'].tolist()} differ from the fitted "
                               f"sizes' {grids}")
        entry = _TextSide(batch, torch.tensor([m for _, m, _ in samples], dtype=torch.bool))
        self._text[key] = entry
        while len(self._text) > self.max_text_sides:
            self._text.popitem(last=False)
        return entry
