"""The fast encoder: the pooled features of stock (fp32, tiny model), nothing of the model patched, a clear fallback."""
import numpy as np
import pytest
import torch

from vla_lib.config import RunConfig
from vla_lib.vlm.interface import load_backbone
from vla_lib.vlm.qwen.encode import encode, pooling_weights, prepare_inputs
from vla_lib.vlm.qwen.fast_vision import disable_fast_vision, enable_fast_vision, plan_layout


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    cfg = RunConfig.from_yaml("params/ci.yaml")
    cfg.backbone.tiny_model_dir = str(tmp_path_factory.mktemp("tiny"))
    cfg.backbone.fast_vision = "off"  # stock to start with, also on a GPU machine (where "auto" turns it on)
    cfg.backbone.image_resize_height, cfg.backbone.image_resize_width = 360, 640  # many windows per image
    bb = load_backbone(cfg.backbone)
    assert bb.model.config.vision_config.fullatt_block_indexes == [1]  # layer 0 windowed, layer 1 full
    return bb, cfg


def _frames(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (360, 640, 3), dtype=np.uint8) for _ in range(5)]


def _batches(bb):
    frames = _frames()
    # two samples with different view sets and prompt lengths (packing, padding and masks all matter), and one alone
    mixed = prepare_inputs(bb.processor, [(frames, "Insert", [True] * 5),
                                          (frames[:3], "Perform the insertion task",
                                           [True, True, False, True, False])], bb.pixel_budget)
    single = prepare_inputs(bb.processor, [(frames, "Insert", [True] * 5)], bb.pixel_budget)
    # every view masked (a session's first anchors, before any camera frame): a batch of them has no images at all
    # (no image_grid_thw: the cache build's last batch crashed on it), or sits beside a sample with images
    blind = ([], "Perform the insertion task", [False] * 5)
    no_images = prepare_inputs(bb.processor, [blind, blind], bb.pixel_budget)
    assert "image_grid_thw" not in no_images.batch
    with_blind = prepare_inputs(bb.processor, [(frames[:2], "Insert", [True, True, False, False, False]), blind],
                                bb.pixel_budget)
    return {"mixed": mixed, "single": single, "no_images": no_images, "with_blind": with_blind}


@pytest.mark.parametrize("compile", [False, pytest.param(True, marks=pytest.mark.quality)], ids=["eager", "compiled"])
def test_fast_encoder_matches_stock_and_patches_nothing(backbone, compile):
    bb, _ = backbone
    batches = _batches(bb)
    stock = {name: encode(bb, inputs, "per_view") for name, inputs in batches.items()}
    before = {id(m): set(m.__dict__) for m in bb.model.modules()}
    calls = []
    assert enable_fast_vision(bb, "masked_sdpa", compile=compile, log=calls.append) == "masked_sdpa" and calls
    try:
        for name, inputs in batches.items():
            fast, fast_mask = encode(bb, inputs, "per_view")
            torch.testing.assert_close(fast, stock[name][0], atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")
            assert torch.equal(fast_mask, stock[name][1])
        # nothing bound onto the model's modules: its own forward (what any other code calls) is untouched
        assert {id(m): set(m.__dict__) for m in bb.model.modules()} == before
        inner = dict(batches["single"].batch)
        direct = bb.model.model(**inner, use_cache=False).last_hidden_state
    finally:
        disable_fast_vision(bb)
    assert bb.fast is None
    torch.testing.assert_close(bb.model.model(**inner, use_cache=False).last_hidden_state, direct, atol=0, rtol=0)
    torch.testing.assert_close(encode(bb, batches["mixed"], "per_view")[0], stock["mixed"][0], atol=0, rtol=0)


def test_layout_depends_on_shapes_not_pixels_and_masks_padding_only(backbone):
    bb, _ = backbone

    def layout(inputs):
        b = inputs.batch
        w, _ = pooling_weights(b["input_ids"], b["attention_mask"], b["image_grid_thw"], inputs.view_masks,
                               bb.config, "per_view")
        return plan_layout(bb.model, b, w)

    a = layout(prepare_inputs(bb.processor, [(_frames(0), "Insert", [True] * 5)], bb.pixel_budget))
    b = layout(prepare_inputs(bb.processor, [(_frames(1), "Insert", [True] * 5)], bb.pixel_budget))
    assert a.shape_key == b.shape_key  # same graph serves other pixels
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert "lm_valid" not in a.tensors  # no padding: SDPA's causal flag, no mask
    mixed = layout(_batches(bb)["mixed"])
    assert mixed.shape_key != a.shape_key and "lm_valid" in mixed.tensors
    assert (mixed.tensors["cu_window"][1:] - mixed.tensors["cu_window"][:-1]).max() == mixed.max_window
    # pooling weights average: each present view's row and the instruction row sum to one
    sums = mixed.tensors["pool_weights"].sum(-1)
    torch.testing.assert_close(sums[1], torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0]))


def test_unknown_transformers_layout_keeps_stock_and_says_so(backbone):
    bb, cfg = backbone
    other = load_backbone(cfg.backbone)
    del other.model.model.visual.merger  # a module layout this fast path does not know
    with pytest.warns(UserWarning, match="stock forward kept: visual lacks \\['merger'\\]"):
        assert enable_fast_vision(other, "masked_sdpa", log=lambda *a: None) is None
    assert other.fast is None
