"""LoRA injection (peft): the published Stage-2 plan's parameter count on the 3B config, targets that leave the
vision frozen."""
import pytest

from vla_lib.config import ConfigError, LoraConfig
from vla_lib.stage2.lora import inject_lora, lora_parameter_count, touches_vision


def count_for_config(config, lcfg) -> int:
    """LoRA parameters for Qwen2.5-VL's model config, on the meta device (no weights allocated)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        return lora_parameter_count(inject_lora(Qwen2_5_VLForConditionalGeneration._from_config(config), lcfg))


@pytest.fixture(scope="module")
def processor_tokenizer(tmp_path_factory):
    from vla_lib.vlm.qwen.tiny_model import build_tokenizer

    return build_tokenizer()


def test_lora_count_on_the_3b_config_is_the_originals(processor_tokenizer):
    from vla_lib.vlm.qwen.tiny_model import qwen25_vl_3b_config

    config = qwen25_vl_3b_config(processor_tokenizer)  # meta device inside: no weights allocated
    assert count_for_config(config, LoraConfig()) == 7_372_800
    # 36 layers x r x ((2048 + 2048) q + (2048 + 256) k + (2048 + 256) v + (2048 + 2048) o)
    assert count_for_config(config, LoraConfig(r=8)) == 36 * 8 * (4096 + 2304 + 2304 + 4096)


def test_default_targets_leave_the_vision_tower_frozen(processor_tokenizer):
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from vla_lib.vlm.qwen.backbone import Backbone
    from vla_lib.vlm.qwen.tiny_model import qwen25_vl_3b_config

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(qwen25_vl_3b_config(processor_tokenizer))
    backbone = Backbone(model, None, torch.device("meta"), torch.float32, "3b", "meta", 0)
    assert touches_vision(model, LoraConfig(), backbone.vision_scope) == []
    # the vision blocks' fused projection
    assert touches_vision(model, LoraConfig(targets=["qkv", "q_proj"]), backbone.vision_scope)
    # Stage 2 trains only the LM's decoder layers: targets elsewhere are refused, not silently left untrained
    from vla_lib.config import RunConfig
    from vla_lib.stage2.train_stage2 import use_vision_cache

    cfg = RunConfig()
    assert use_vision_cache(cfg, backbone) is True
    for targets, cache, match in ((["qkv", "q_proj"], "on", "cannot be cached"), (["qkv", "q_proj"], "off", "outside"),
                                  (["lm_head", "q_proj"], "auto", "outside")):
        cfg.lora.targets, cfg.lora.vision_cache = targets, cache
        with pytest.raises(ConfigError, match=match):
            use_vision_cache(cfg, backbone)
    cfg.lora.targets, cfg.lora.vision_cache = ["gate_proj"], "auto"  # the vision blocks' MLP shares these names
    with pytest.raises(ConfigError, match="outside"):
        use_vision_cache(cfg, backbone)
    cfg.lora.targets, cfg.lora.vision_cache = ["q_proj", "o_proj"], "off"
    assert use_vision_cache(cfg, backbone) is False


def test_lora_section_validates_its_choices():
    with pytest.raises(ConfigError, match="vision_cache"):
        LoraConfig(vision_cache="sometimes")
    with pytest.raises(ConfigError, match="r >= 1"):
        LoraConfig(r=0)
