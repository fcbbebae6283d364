"""The Stage-1 heads: the original's shapes, the proprioception token, the null sensor."""
import pytest
import torch

from vla_lib.config import RunConfig
from vla_lib.models.modeling_policy import Stage1Policy


def _policy(**model):
    return Stage1Policy(RunConfig.from_dict({"model": model}).model)


def test_original_preset_has_the_original_parameter_counts():
    counts = _policy(preset="original").parameter_counts()
    assert counts["sensor_encoder"] == 47_238_656 and counts["action_expert"] == 72_448_007


def test_history_is_required_when_configured_and_changes_the_output():
    torch.manual_seed(0)
    p = _policy(preset="small", vl_dim=16).eval()
    vl, mask = torch.randn(2, 6, 16), torch.ones(2, 6, dtype=torch.bool)
    with pytest.raises(ValueError, match="last 4 pose deltas"):
        p(vl, mask)
    h = torch.zeros(2, 4, 6)
    a = p(vl, mask, history=h)
    b = p(vl, mask, history=h + 1.0)
    assert a.shape == (2, 8, 7) and not torch.allclose(a, b)


def test_missing_sensor_uses_the_null_embedding_not_the_window():
    torch.manual_seed(0)
    p = _policy(preset="small", vl_dim=16, history_steps=0).eval()
    vl, mask = torch.randn(2, 6, 16), torch.ones(2, 6, dtype=torch.bool)
    s1, s2 = torch.randn(2, 65, 1026), torch.randn(2, 65, 1026)
    valid = torch.ones(2, 65, dtype=torch.bool)
    none = torch.zeros(2, dtype=torch.bool)
    torch.testing.assert_close(p(vl, mask, s1, valid, none), p(vl, mask, s2, valid, none))
    has = torch.tensor([True, False])
    out1, out2 = p(vl, mask, s1, valid, has), p(vl, mask, s2, valid, has)
    assert not torch.allclose(out1[0], out2[0]) and torch.allclose(out1[1], out2[1])
