"""Image preparation on the device (run here on the CPU) against the reference path: qwen_vl_utils + the processor.

Tolerances, in the processor's normalised units (one level of 255 is 1 / (255 * std) = 0.0146 to 0.0153): the token
grid and every non-pixel input are identical; with an image already at its fitted size the patch layout is the
processor's bit for bit; resized (PIL's order: horizontal pass, round and clip, vertical pass), a pixel differs by
at most 2 levels (0.031; PIL's fixed-point coefficients against float32) and the mean absolute difference is under
0.001 (in practice almost every pixel is identical). JPEGs decode identically on the CPU (libjpeg both ways);
nvJPEG's difference on CUDA is measured by benchmarks/vl_end_to_end.py.
"""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from vla_lib.config import RunConfig
from vla_lib.vlm.qwen.backbone import load_backbone, set_pixel_budget
from vla_lib.vlm.qwen.encode import encode, prepare_for, prepare_inputs
from vla_lib.vlm.qwen.gpu_prepare import (DeviceImagePrep, PatchSpec, fitted_sizes, patchify, prepare_pixels,
                                     resolve_image_prep)

LEVEL = 1 / (255 * 0.26130258)  # one level of 255 in normalised units, at the largest of the three scales
MAX_DIFF, MEAN_DIFF = 2 * LEVEL + 1e-4, 0.001


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    cfg = RunConfig.from_yaml("params/ci.yaml")
    cfg.backbone.tiny_model_dir = str(tmp_path_factory.mktemp("tiny"))
    cfg.backbone.image_resize_height, cfg.backbone.image_resize_width = 360, 640
    cfg.backbone.fast_vision, cfg.backbone.image_prep = "off", "cpu"
    return load_backbone(cfg.backbone), cfg


def _frame(h, w, seed):
    """Camera-like content: smooth shading, edges and sensor noise (pure noise would test nothing but the filter)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([127 + 90 * np.sin(xx / (17 + 9 * c) + yy / (29 + 5 * c) + seed) for c in range(3)], -1)
    img[(yy // 37 + xx // 53) % 5 == 0] = rng.integers(0, 255, 3)
    return (img + rng.normal(0, 6, img.shape)).clip(0, 255).astype(np.uint8)


def _jpeg(frame) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _assert_close_to_reference(ref, got):
    assert set(ref.batch) == set(got.batch)
    for k in ref.batch:
        if k != "pixel_values":
            assert torch.equal(ref.batch[k], got.batch[k]), k
    assert torch.equal(ref.view_masks, got.view_masks)
    a, b = ref.batch["pixel_values"], got.batch["pixel_values"]
    assert a.shape == b.shape and b.dtype == a.dtype
    diff = (a - b).abs()
    assert float(diff.max()) <= MAX_DIFF and float(diff.mean()) <= MEAN_DIFF, (float(diff.max()),
                                                                                 float(diff.mean()))


def test_patch_layout_is_the_processors_bit_for_bit(backbone):
    bb, _ = backbone
    spec = PatchSpec.from_processor(bb.processor)
    h, w = 336, 616  # its own fit at a budget of 336 * 616: no resize anywhere
    assert fitted_sizes(h, w, h * w, spec) == [(h, w)]
    frames = [_frame(h, w, s) for s in range(3)]
    raw = bb.processor.image_processor(images=frames, do_rescale=False, do_normalize=False, return_tensors="pt")
    mine = patchify(torch.stack([torch.from_numpy(f).permute(2, 0, 1) for f in frames]).float(), spec)
    assert raw["image_grid_thw"].tolist() == [[1, h // 14, w // 14]] * 3
    assert torch.equal(raw["pixel_values"].float(), mine)
    # with the processor's rescale and normalisation: float32 rounding only
    pixels, sizes = prepare_pixels([torch.from_numpy(f).permute(2, 0, 1) for f in frames], h * w, spec)
    ref = bb.processor.image_processor(images=frames, return_tensors="pt")["pixel_values"]
    assert sizes == [(h, w)] * 3
    torch.testing.assert_close(pixels, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("source", ["frames", "jpeg_bytes", "paths"])
def test_device_preparation_matches_the_cpu_path(backbone, source, tmp_path):
    bb, _ = backbone
    # down (1280x720, 640x360) and up (480x270) to 616x336; two samples with other view sets and prompt lengths
    frames = [_frame(720, 1280, 0), _frame(360, 640, 1), _frame(270, 480, 2), _frame(360, 640, 3)]
    if source == "frames":
        given, decoded = frames, frames
    else:
        data = [_jpeg(f) for f in frames]
        decoded = [np.asarray(Image.open(io.BytesIO(d)).convert("RGB")) for d in data]  # the CPU path's decoder
        given = data
        if source == "paths":
            given = []
            for k, d in enumerate(data):
                (tmp_path / f"{k}.jpg").write_bytes(d)
                given.append(tmp_path / f"{k}.jpg")
    samples = lambda ims: [(ims[:3], "Insert", [True, True, False, True, False]),  # noqa: E731
                           (ims[1:], "Perform the insertion task", [True, False, True, True, False])]
    ref = prepare_inputs(bb.processor, samples(decoded), bb.pixel_budget)
    prep = DeviceImagePrep(bb.processor, "cpu", torch.float32)
    got = prep(samples(given), bb.pixel_budget)
    assert ref.batch["image_grid_thw"].tolist() == [[1, 24, 44]] * 6  # 616 x 336 for every source size
    _assert_close_to_reference(ref, got)
    # the text side is prepared once: a second update with other pixels reuses it and its plans
    again = prep(samples(given[::-1]), bb.pixel_budget)
    assert again.plans is got.plans and again.batch["input_ids"] is got.batch["input_ids"]


def test_features_from_either_preparation_agree(backbone):
    bb, _ = backbone
    frames = [_frame(360, 640, s) for s in range(5)]
    samples = [(frames, "Perform the insertion task", [True] * 5)]
    ref, ref_mask = encode(bb, prepare_inputs(bb.processor, samples, bb.pixel_budget))
    inputs = DeviceImagePrep(bb.processor, "cpu", bb.dtype)(samples, bb.pixel_budget)
    got, got_mask = encode(bb, inputs)
    assert torch.equal(ref_mask, got_mask)
    assert float((got - ref).norm() / ref.norm()) < 0.01
    assert "per_view" in inputs.plans  # planned once, kept with the text side
    torch.testing.assert_close(encode(bb, inputs)[0], got, atol=0, rtol=0)


def test_pixel_budget_change_is_followed(backbone):
    bb, _ = backbone
    frame = _frame(360, 640, 0)
    prep = DeviceImagePrep(bb.processor, "cpu", torch.float32)
    try:
        set_pixel_budget(bb, 308 * 168)
        ref = prepare_inputs(bb.processor, [([frame], "Insert", [True])], bb.pixel_budget)
        got = prep([([frame], "Insert", [True])], bb.pixel_budget)
        assert got.batch["image_grid_thw"].tolist() == ref.batch["image_grid_thw"].tolist() == [[1, 12, 20]]
        _assert_close_to_reference(ref, got)
    finally:
        set_pixel_budget(bb, 640 * 360)


def test_image_prep_setting_backbone_and_store_identity(backbone):
    from vla_lib.vlm.cache_build import open_store

    bb, cfg = backbone
    assert resolve_image_prep("auto", torch.device("cpu")) == "cpu"
    assert resolve_image_prep("auto", torch.device("cuda")) == "gpu"
    with pytest.raises(ValueError):
        resolve_image_prep("fast", torch.device("cpu"))
    cpu_parts = open_store(cfg, create=False).parts
    assert "image_prep" not in cpu_parts and "image_prep" not in bb.parts()  # CPU-prepared stores keep their key
    cfg.backbone.image_prep = "gpu"
    try:
        assert open_store(cfg, create=False).parts == {**cpu_parts, "image_prep": "gpu"}
        gpu_bb = load_backbone(cfg.backbone)  # "gpu" on a CPU device: the same code on the CPU
        assert isinstance(gpu_bb.prep, DeviceImagePrep) and gpu_bb.parts()["image_prep"] == "gpu"
        frames = [_frame(360, 640, s) for s in range(5)]
        inputs = prepare_for(gpu_bb, [([_jpeg(f) for f in frames], "Insert", [True] * 5)])
        assert inputs.plans is not None and inputs.batch["image_grid_thw"].tolist() == [[1, 24, 44]] * 5
    finally:
        cfg.backbone.image_prep = "cpu"
    assert bb.prep is None


def test_compile_cache_folder_replaces_torchs_default_but_not_the_users(tmp_path, monkeypatch):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from vla_lib.vlm.qwen.compile_cache import ENV, use_compile_cache

    monkeypatch.setenv(ENV, default_cache_dir())  # what torch itself writes there at first look
    assert use_compile_cache(tmp_path / "cc") == str(tmp_path / "cc") == __import__("os").environ[ENV]
    assert (tmp_path / "cc").is_dir()
    monkeypatch.setenv(ENV, str(tmp_path / "mine"))  # the user's choice wins
    assert use_compile_cache(tmp_path / "cc") == str(tmp_path / "mine")
    monkeypatch.delenv(ENV)
    assert use_compile_cache("") is None


@pytest.mark.parametrize("worker_decode", [False, True], ids=["bytes_to_device", "decoded_in_workers"])
def test_cache_build_with_device_preparation(synth_root, tmp_path, worker_decode):
    """The cache build with the preparation on the (here CPU) device: the workers read bytes (or decode them), the
    store is its own, and its features are the CPU-prepared store's to within the preparation's tolerance."""
    from vla_lib.data.samples import build_index
    from vla_lib.vlm.cache_build import build_cache, open_store

    cfg = RunConfig.from_yaml("params/ci.yaml")
    cfg.data.root, cfg.data.max_sessions = str(synth_root), 1
    cfg.backbone.tiny_model_dir = str(tmp_path / "tiny")
    cfg.cache.dir, cfg.cache.shard_size, cfg.cache.num_workers = str(tmp_path / "cache"), 8, 1
    cfg.backbone.image_prep = "cpu"
    build_cache(cfg, log=lambda *a: None)
    cpu_store = open_store(cfg)
    cfg.backbone.image_prep, cfg.cache.worker_decode = "gpu", worker_decode
    summary = build_cache(cfg, log=lambda *a: None)
    gpu_store = open_store(cfg)
    assert gpu_store.dir != cpu_store.dir and summary["encoded"] == summary["unique_inputs"] > 0
    keys = list(dict.fromkeys(build_index(cfg.data).table.cache_key))
    (a, ma), (b, mb) = cpu_store.get(keys), gpu_store.get(keys)
    assert torch.equal(ma, mb)
    assert float((b.float() - a.float()).norm() / a.float().norm()) < 0.01
