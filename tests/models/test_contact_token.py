"""The contact-memory token: read when the heads are trained with it, only for samples with sensor data."""
from dataclasses import replace

import torch

from tests.models.test_proprioception import MEAN, STD, _cfg, _inputs
from vla_lib.models.modeling_policy import Stage1Policy


def _policy(**model) -> Stage1Policy:
    torch.manual_seed(0)
    return Stage1Policy(_cfg(history_steps=0, **model).model, MEAN, STD).eval()


def _touching(x, depth_mm: float):
    contact = torch.zeros(x.vl.shape[0], 4)
    contact[:, 0], contact[:, 3] = 1.0, -depth_mm
    return replace(x, contact=contact)


def test_the_token_reads_the_memory_only_with_sensor_data():
    p, x = _policy(contact_memory=True), replace(_inputs(k=0), contact=torch.zeros(3, 4))  # not in contact
    free, deep = p(x), p(_touching(x, 1.5))
    assert (free - deep).abs().amax(dim=(1, 2)).min() > 1e-4  # every sample: the memory changes the chunk
    blind = replace(x, sensor_mask=torch.zeros_like(x.sensor_mask))  # no sensor: no memory either
    torch.testing.assert_close(p(blind), p(_touching(blind, 1.5)))
    torch.testing.assert_close(p(_touching(x, 1.5).without_sensor()), p(x.without_sensor()))


def test_heads_without_the_option_ignore_the_memory():
    p, x = _policy(), _inputs(k=0)
    assert p.expert.contact is None
    torch.testing.assert_close(p(x), p(_touching(x, 1.5)))


def test_heads_with_the_token_refuse_inputs_without_the_memory():
    """Zeros would read "not in contact" and drive the tip on: inputs that do not carry the memory are refused."""
    import pytest

    p, x = _policy(contact_memory=True), _inputs(k=0)
    assert x.contact is None
    with pytest.raises(ValueError, match="trained with model.contact_memory"):
        p(x)
    p(_touching(x, 0.0))
