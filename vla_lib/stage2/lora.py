"""LoRA on the VL backbone with peft: configuration, injection, the parameter count, the adapter's tensors.

Defaults: r 16, alpha 32, dropout 0.05 on `q_proj, k_proj, v_proj, o_proj`. peft matches target names as
module-name suffixes; Qwen2.5-VL's vision blocks call their projections `qkv` and `proj`, so these targets touch only
the language model and the vision tower stays frozen (which is what lets Stage 2 cache its output per frame, see
`vision_cache`).

Only the adapter is ever saved, never the base weights: the adapter folder is part of a Stage-2 checkpoint
(`vla_lib.policy.adapter`).
"""
from __future__ import annotations

import torch

from vla_lib.policy.adapter import quiet_peft


def peft_config(lcfg):
    """A peft LoraConfig from the run's `lora` section (vla_lib.config.LoraConfig)."""
    from peft import LoraConfig

    return LoraConfig(r=int(lcfg.r), lora_alpha=float(lcfg.alpha), lora_dropout=float(lcfg.dropout),
                      target_modules=list(lcfg.targets), bias="none")


def matched_modules(model, lcfg) -> list[str]:
    """Names of the modules peft would adapt (its own matching rule), without injecting anything."""
    from peft.tuners.tuners_utils import check_target_module_exists

    config = peft_config(lcfg)
    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and check_target_module_exists(config, name)]


def touches_vision(model, lcfg, vision_scope: str) -> list[str]:
    """The targeted modules inside the vision tower (empty: the vision tower stays frozen). `vision_scope`: the
    backbone's fragment of its vision modules' dotted names (`Stage2Backbone.vision_scope`)."""
    return [n for n in matched_modules(model, lcfg) if vision_scope in f".{n}"]


def outside_lm_layers(model, lcfg, lm_layer_scope: str) -> list[str]:
    """Targeted modules outside the language model's decoder layers (the vision tower, lm_head, ...): Stage 2 runs
    only those layers with gradients, so LoRA anywhere else would be counted, saved and never trained.
    `lm_layer_scope`: the backbone's fragment of those layers' dotted names (`Stage2Backbone.lm_layer_scope`)."""
    return [n for n in matched_modules(model, lcfg) if lm_layer_scope not in f".{n}"]


def inject_lora(model, lcfg):
    """Inject LoRA into `model` in place (a backbone's `model`) and return the peft model that wraps it. Only the
    LoRA matrices require gradients; every base weight stays frozen."""
    from peft import get_peft_model

    if not matched_modules(model, lcfg):
        from vla_lib.errors import ConfigError

        raise ConfigError(f"lora.targets {list(lcfg.targets)} match no linear module of the backbone")
    model.requires_grad_(False)
    with quiet_peft():
        peft_model = get_peft_model(model, peft_config(lcfg))
    for name, p in peft_model.named_parameters():
        p.requires_grad_("lora_" in name)
    return peft_model


def lora_parameter_count(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


def adapter_state(peft_model) -> dict[str, torch.Tensor]:
    """The adapter's tensors as peft saves them (names without the adapter name)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(peft_model)
