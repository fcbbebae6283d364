"""Fusion types: each is one entry of `models/fusion.py` `FUSIONS`, and its layers keep the checkpoint keys
(`expert.fuse.*`, `expert.vl_proj.*`, ...) and the parameter order that saved checkpoints and optimiser states hold."""
import pytest
import torch
from torch import nn

from vla_lib.config import ConfigError, RunConfig
from vla_lib.models import fusion
from vla_lib.models.inputs import example_inputs
from vla_lib.models.modeling_policy import Stage1Policy

PROJ = ["expert.vl_proj.weight", "expert.vl_proj.bias", "expert.sensor_proj.weight", "expert.sensor_proj.bias"]
FUSE = ["expert.fuse.weight", "expert.fuse.bias"]
KEYS = {  # the expert's keys after its own `queries`, as checkpoints of every fusion hold them
    "concat": FUSE,
    "cross_attention": PROJ + ["expert.attn.in_proj_weight", "expert.attn.in_proj_bias", "expert.attn.out_proj.weight",
                               "expert.attn.out_proj.bias"] + FUSE,
    "gated": PROJ + ["expert.gate.weight", "expert.gate.bias"] + FUSE,
    "none": FUSE,
}


def _model_cfg(**model):
    return RunConfig.from_dict({"model": {"preset": "small", "vl_dim": 16, **model}}).model


@pytest.mark.parametrize("name", list(KEYS))
def test_a_fusions_layers_keep_their_checkpoint_keys_and_order(name):
    keys = [k for k in Stage1Policy(_model_cfg(fusion=name)).state_dict() if k.startswith("expert.")]
    assert keys[0] == "expert.queries" and keys[1:1 + len(KEYS[name])] == KEYS[name]
    assert keys[1 + len(KEYS[name])].startswith("expert.history.")


def test_a_new_fusion_type_is_one_entry_of_the_registry(monkeypatch):
    """A fusion added to `FUSIONS` (here: the sensor embedding alone) is a choice of `model.fusion`, and the
    expert builds and runs it; a name not in it is refused by the config, naming the choices."""
    class SensorOnly(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.fuse = nn.Linear(cfg.sensor_output_dim, cfg.expert_hidden)

        def forward(self, vl, vl_mask, sensor):
            return self.fuse(sensor).unsqueeze(1)

    with pytest.raises(ConfigError, match=r"model.fusion must be one of \['concat', 'cross_attention', 'gated', "
                                          r"'none'\], got 'sensor_only'"):
        _model_cfg(fusion="sensor_only")
    monkeypatch.setitem(fusion.FUSIONS, "sensor_only", SensorOnly)
    cfg = _model_cfg(fusion="sensor_only")
    torch.manual_seed(0)
    policy = Stage1Policy(cfg).eval()
    assert isinstance(policy.expert.condition, SensorOnly) and "expert.fuse.weight" in policy.state_dict()
    x = example_inputs(cfg, n_tokens=6, device="cpu", random=True)
    out = policy(x)
    x.vl = torch.randn_like(x.vl)  # this fusion does not read the VL features
    assert out.shape == (1, cfg.horizon, cfg.action_dim) and torch.equal(policy(x), out)
