"""Qwen2.5-VL behind the backbone interface (`vlm.interface`): loading, the message path and pooling, the fast
encoder, the tiny offline model. Everything Qwen-specific lives in this package."""
from vla_lib.vlm.qwen.backbone import load_backbone as load
from vla_lib.vlm.qwen.backbone import parts

__all__ = ["load", "parts"]
