"""How the Action Expert joins the VL features and the sensor embedding into its condition: one module per
`model.fusion`, all in `FUSIONS` (the config's choices are its names, so a new fusion type is one entry here).

Each is built from the `PolicyConfig` and maps (vl (B, T, vl_dim), vl_mask (B, T), sensor (B, sensor_output_dim) or
None) to the condition (B, 1, expert_hidden). Its layers are registered on the expert under their own names
(`adopt`), so checkpoint keys read `expert.fuse.*`, `expert.vl_proj.*`, ... whichever module builds them.
"""
from __future__ import annotations

import torch
from torch import nn


def _vl_mean(vl: torch.Tensor, vl_mask: torch.Tensor) -> torch.Tensor:
    """The mean of the tokens that exist (a missing view is masked out)."""
    w = vl_mask.unsqueeze(-1).to(vl.dtype)
    return (vl * w).sum(1) / w.sum(1).clamp(min=1)


class ConcatFusion(nn.Module):
    """One linear layer over [mean VL token, sensor embedding]."""

    def __init__(self, cfg):
        super().__init__()
        self.fuse = nn.Linear(cfg.vl_dim + cfg.sensor_output_dim, cfg.expert_hidden)

    def forward(self, vl, vl_mask, sensor):
        return self.fuse(torch.cat([_vl_mean(vl, vl_mask), sensor], -1)).unsqueeze(1)


class CrossAttentionFusion(nn.Module):
    """The sensor asks the per-view tokens (one attention query), so it can weigh the views."""

    def __init__(self, cfg):
        super().__init__()
        d = cfg.expert_hidden
        self.vl_proj, self.sensor_proj = nn.Linear(cfg.vl_dim, d), nn.Linear(cfg.sensor_output_dim, d)
        self.attn = nn.MultiheadAttention(d, cfg.expert_heads, batch_first=True)
        self.fuse = nn.Linear(d, d)

    def forward(self, vl, vl_mask, sensor):
        q = self.sensor_proj(sensor).unsqueeze(1)
        kv = self.vl_proj(vl)
        return self.fuse(self.attn(q, kv, kv, key_padding_mask=~vl_mask)[0])


class GatedFusion(nn.Module):
    """A learned per-feature gate between the projected mean VL token and the projected sensor embedding."""

    def __init__(self, cfg):
        super().__init__()
        d = cfg.expert_hidden
        self.vl_proj, self.sensor_proj = nn.Linear(cfg.vl_dim, d), nn.Linear(cfg.sensor_output_dim, d)
        self.gate = nn.Linear(2 * d, d)
        self.fuse = nn.Linear(d, d)

    def forward(self, vl, vl_mask, sensor):
        v, s = self.vl_proj(_vl_mean(vl, vl_mask)), self.sensor_proj(sensor)
        g = torch.sigmoid(self.gate(torch.cat([v, s], -1)))
        return self.fuse(g * v + (1 - g) * s).unsqueeze(1)


class NoFusion(nn.Module):
    """The VL features alone (`model.fusion: none`, and every model without a sensor)."""

    def __init__(self, cfg):
        super().__init__()
        self.fuse = nn.Linear(cfg.vl_dim, cfg.expert_hidden)

    def forward(self, vl, vl_mask, sensor):
        return self.fuse(_vl_mean(vl, vl_mask)).unsqueeze(1)


FUSIONS: dict[str, type[nn.Module]] = {"concat": ConcatFusion, "cross_attention": CrossAttentionFusion,
                                       "gated": GatedFusion, "none": NoFusion}


def adopt(owner: nn.Module, fusion: nn.Module) -> None:
    """Registers the fusion's layers on `owner` by their own names (its checkpoint keys, in the order the fusion
    built them: the parameter and optimiser-state order) and keeps the fusion as the plain attribute
    `owner.condition`, not a submodule (that would add its name to every key). The layers are the same objects, so
    `owner.to()`, `train()`, `state_dict()` and `load_state_dict()` reach them; the fusion's own `training` flag is
    never read (no fusion has dropout of its own)."""
    for name, layer in fusion.named_children():
        owner.add_module(name, layer)
    object.__setattr__(owner, "condition", fusion)
