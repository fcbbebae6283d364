"""The fast vision path: same pooled features as stock (fp32, tiny model), scoped to one model instance."""
import numpy as np
import torch

from vla_lib.config import RunConfig
from vla_lib.vlm.backbone import load_backbone
from vla_lib.vlm.encode import encode, prepare_inputs
from vla_lib.vlm.fast_vision import disable_fast_vision, enable_fast_vision


def test_packed_window_attention_matches_stock_and_touches_only_its_model(tmp_path):
    cfg = RunConfig.from_yaml("params/ci.yaml")
    cfg.backbone.tiny_model_dir = str(tmp_path / "tiny")
    cfg.backbone.fast_vision = "off"  # stock to start with, also on a GPU machine (where "auto" turns it on)
    cfg.backbone.image_resize_height, cfg.backbone.image_resize_width = 360, 640  # many windows per image
    bb, other = load_backbone(cfg.backbone), load_backbone(cfg.backbone)
    assert bb.model.config.vision_config.fullatt_block_indexes == [1]  # layer 0 windowed, layer 1 full
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (360, 640, 3), dtype=np.uint8) for _ in range(5)]
    # a batch of two samples with different view sets and prompt lengths: packing, padding and masks all matter
    inputs = prepare_inputs(bb.processor, [(frames, "Insert", [True] * 5),
                                           (frames[:3], "Perform the insertion task", [True, True, False, True, False])],
                            bb.pixel_budget)
    stock, mask = encode(bb, inputs, "per_view")
    calls = []
    assert enable_fast_vision(bb.model, "masked_sdpa", log=calls.append) == "masked_sdpa" and calls
    fast, fast_mask = encode(bb, inputs, "per_view")
    torch.testing.assert_close(fast, stock, atol=1e-4, rtol=1e-4)
    assert torch.equal(fast_mask, mask)
    # a second instance of the same class keeps the stock forward: nothing was patched globally
    assert "forward" not in other.model.model.visual.blocks[0].attn.__dict__
    torch.testing.assert_close(encode(other, inputs, "per_view")[0], stock, atol=0, rtol=0)
    disable_fast_vision(bb.model)
    assert "forward" not in bb.model.model.visual.blocks[0].attn.__dict__
    torch.testing.assert_close(encode(bb, inputs, "per_view")[0], stock, atol=0, rtol=0)
