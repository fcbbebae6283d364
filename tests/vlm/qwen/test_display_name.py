"""What banners and metrics call the backbone: random weights are the 3B architecture, not the folder "tiny"."""
from vla_lib.config import BackboneConfig
from vla_lib.vlm.qwen.backbone import display_name


def test_random_weights_are_named_as_the_3b_architecture():
    assert display_name(BackboneConfig(random_weights=True)) == "Qwen2.5-VL-3B architecture (random weights)"
    assert display_name(BackboneConfig(name_or_path="tiny")) == "tiny"
    assert display_name(BackboneConfig(name_or_path="Qwen/Qwen2.5-VL-3B-Instruct")) == "Qwen/Qwen2.5-VL-3B-Instruct"
