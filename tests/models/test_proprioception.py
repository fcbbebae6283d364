"""How the heads read the arm's own motion: the residual on the last delta, history dropout, history until contact,
the checkpoint."""
import dataclasses

import pytest
import torch

from vla_lib.config import RunConfig
from vla_lib.data.normalization import NormStats
from vla_lib.errors import ConfigError
from vla_lib.models.inputs import PolicyInputs
from vla_lib.models.modeling_policy import Stage1Policy
from vla_lib.policy.checkpoint import load_checkpoint, save_checkpoint

MEAN, STD = [0.1, -0.2, -0.5, 0.0, 0.3, 0.0, 0.0], [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 1.0]


def _cfg(**model) -> RunConfig:
    return RunConfig.from_dict({"model": {"preset": "small", "vl_dim": 16, **model}})


def _policy(**model) -> Stage1Policy:
    torch.manual_seed(0)
    return Stage1Policy(_cfg(**model).model, MEAN, STD)


def _inputs(b=3, k=4, contact=False) -> PolicyInputs:
    """`contact`: with a contact memory, every other sample in contact (1 mm in)."""
    g = torch.Generator().manual_seed(1)
    memory = torch.tensor([[1.0, 0.0, 0.0, -1.0], [0.0] * 4]).repeat(b, 1)[:b] if contact else None
    return PolicyInputs(torch.randn(b, 6, 16, generator=g), torch.ones(b, 6, dtype=torch.bool),
                        torch.randn(b, 65, 1026, generator=g), torch.ones(b, 65, dtype=torch.bool),
                        torch.randn(b, k, 6, generator=g), memory)


def _zero_correction(p: Stage1Policy) -> None:
    with torch.no_grad():
        p.expert.head.weight.zero_()
        p.expert.head.bias.zero_()


def test_residual_with_zero_correction_predicts_the_last_delta_on_every_step():
    p = _policy(residual_last_delta=True).eval()
    _zero_correction(p)
    x = _inputs()
    out = p.predict(x)  # physical units: the newest measured delta repeated, the gripper its training value
    torch.testing.assert_close(out[..., :6], x.history[:, -1:, :].expand(-1, 8, -1))
    torch.testing.assert_close(out[..., 6], torch.full((3, 8), MEAN[6]))
    off = _policy().eval()  # without the residual the same zero head gives the training mean
    _zero_correction(off)
    torch.testing.assert_close(off.predict(x)[..., :6], torch.tensor(MEAN[:6]).expand(3, 8, 6))


def _reads_history(model, x: PolicyInputs) -> torch.Tensor:
    """(B,) bool: the samples whose output changes with their history (the same draw of dropped samples for both)."""
    other = dataclasses.replace(x, history=x.history + 1.0)
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(0)
    return (a - model(other)).abs().amax((1, 2)) > 0


def test_history_dropout_gives_whole_samples_the_no_history_token_in_training_only():
    p = _policy(history_dropout=0.5, dropout=0.0)  # no layer dropout: the outputs differ only where the history is read
    x = _inputs(b=256)
    read = _reads_history(p.train(), x)
    assert 0.35 < read.float().mean() < 0.65
    assert _reads_history(p.eval(), x).all()
    assert _reads_history(_policy(dropout=0.0).train(), x).all()  # off: every sample reads it in training too
    # the dropped samples read the learned "no history" token (not the token of zero deltas, an arm at the mean
    # speed): it trains, and it is what changes their outputs
    torch.manual_seed(0)
    p.train()(x).square().mean().backward()
    assert p.expert.history_null.grad.abs().sum() > 0
    torch.manual_seed(0)
    before = p(x).detach()
    with torch.no_grad():
        p.expert.history_null.add_(1.0)
    torch.manual_seed(0)
    assert torch.equal((p(x) - before).abs().amax((1, 2)) > 0, ~read)


@pytest.mark.quality  # a CPU compile (Inductor), ~1 min
def test_history_dropout_compiles_into_one_graph():
    """The draw stays on the device (no host sync, no graph break: what the compiled and CUDA-graph training step
    needs); compiled, a share of the samples still ignores its history and the no-history token still trains."""
    p = _policy(history_dropout=0.5, dropout=0.0).train()
    compiled = torch.compile(p, fullgraph=True)
    read = _reads_history(compiled, _inputs(b=256))
    assert 0.35 < read.float().mean() < 0.65
    compiled(_inputs(b=256)).square().mean().backward()
    assert p.expert.history_null.grad.abs().sum() > 0


def test_the_settings_round_trip_through_a_checkpoint_and_old_ones_load_off(tmp_path):
    cfg = _cfg(history_dropout=0.3, history_until_contact=True, contact_memory=True)
    p = Stage1Policy(cfg.model, MEAN, STD).eval()
    stats = NormStats(MEAN, STD, {}, -3.0, 0.1, [0.0] * 1025, [1.0] * 1025, ["s"])
    save_checkpoint(tmp_path / "new.pt", p, stats, cfg, 1, 1, 0.0)
    loaded = load_checkpoint(tmp_path / "new.pt").heads
    assert loaded.config.history_dropout == 0.3 and loaded.config.history_until_contact
    x = _inputs(contact=True)
    torch.testing.assert_close(loaded.predict(x), p.predict(x))
    cfg = _cfg(residual_last_delta=True)
    save_checkpoint(tmp_path / "residual.pt", Stage1Policy(cfg.model, MEAN, STD), stats, cfg, 1, 1, 0.0)
    assert load_checkpoint(tmp_path / "residual.pt").heads.config.residual_last_delta
    blob = torch.load(tmp_path / "new.pt", weights_only=True)  # a checkpoint written before the settings existed
    for key in ("residual_last_delta", "history_dropout", "history_until_contact"):
        del blob["policy_config"][key]
    del blob["model_state_dict"]["expert.history_null"]
    torch.save(blob, tmp_path / "old.pt")
    old = load_checkpoint(tmp_path / "old.pt").heads.config
    assert old.residual_last_delta is False and old.history_dropout == 0.0 and old.history_until_contact is False


def test_history_until_contact_reads_the_arm_in_free_air_only():
    p = _policy(history_until_contact=True, contact_memory=True, dropout=0.0)
    x = _inputs(b=8, contact=True)  # samples 0, 2, 4, 6 in contact
    free = x.contact[:, 0] == 0
    assert torch.equal(_reads_history(p.eval(), x), free)
    assert torch.equal(_reads_history(p.train(), x), free)  # trained as it is run
    no_sensor = dataclasses.replace(x, sensor_mask=torch.zeros_like(x.sensor_mask))
    assert _reads_history(p.eval(), no_sensor).all()  # no sensor, no contact memory: the history throughout
    off = _policy(contact_memory=True, dropout=0.0).eval()
    assert _reads_history(off, x).all()


@pytest.mark.parametrize("model", [{"history_steps": 0, "residual_last_delta": True},
                                   {"history_steps": 0, "history_dropout": 0.2}, {"history_dropout": 1.0},
                                   {"history_until_contact": True},  # no contact memory to read
                                   {"history_until_contact": True, "contact_memory": True, "residual_last_delta": True},
                                   {"history_steps": 0, "history_until_contact": True, "contact_memory": True}])
def test_settings_that_cannot_work_are_refused(model):
    with pytest.raises(ConfigError):
        _cfg(**model)


def test_heads_trained_with_history_dropout_before_its_token_existed_load_with_the_token_they_saw(tmp_path):
    cfg = _cfg(history_dropout=0.2)
    p = Stage1Policy(cfg.model, MEAN, STD).eval()
    stats = NormStats(MEAN, STD, {}, -3.0, 0.1, [0.0] * 1025, [1.0] * 1025, ["s"])
    save_checkpoint(tmp_path / "c.pt", p, stats, cfg, 1, 1, 0.0)
    blob = torch.load(tmp_path / "c.pt", weights_only=True)
    del blob["model_state_dict"]["expert.history_null"]
    torch.save(blob, tmp_path / "c.pt")
    loaded = load_checkpoint(tmp_path / "c.pt").heads
    torch.testing.assert_close(loaded.predict(_inputs()), p.predict(_inputs()))
    # what they gave a dropped sample: the token of zero deltas, the history layer's bias
    torch.testing.assert_close(loaded.expert.history_null, p.expert.history.bias)
