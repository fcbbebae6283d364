"""The Stage-1 heads: the original's shapes, the proprioception token, the null sensor."""
import pytest
import torch

from vla_lib.config import RunConfig
from vla_lib.models.modeling_policy import Stage1Policy


def _policy(**model):
    return Stage1Policy(RunConfig.from_dict({"model": model}).model)


def test_original_preset_has_the_original_parameter_counts():
    counts = _policy(preset="original", vl_dim=2048).parameter_counts()  # the 3B backbone's width
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


def _batch(b=8, sensor=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    vl, mask = torch.randn(b, 6, 16, generator=g), torch.ones(b, 6, dtype=torch.bool)
    window = torch.randn(b, 65, 1026, generator=g) * 0.5 - 3.0 if sensor else torch.zeros(b, 65, 1026)
    valid = torch.full((b, 65), sensor)
    return vl, mask, window, valid, torch.full((b,), sensor), torch.randn(b, 4, 6, generator=g)


def test_train_batches_without_sensor_leave_the_encoder_state_untouched():
    """Defect 1: no-sensor samples run through the encoder as zero windows; they must not move its statistics."""
    torch.manual_seed(0)
    p = _policy(preset="small", vl_dim=16).train()
    before = {k: v.clone() for k, v in p.sensor_encoder.state_dict().items()}
    with torch.no_grad():
        for i in range(50):
            p(*_batch(sensor=False, seed=i))
    after = p.sensor_encoder.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"{k} changed by batches without sensor data"
    # a mixed batch: the statistics equal those of its sensor rows alone
    vl, mask, window, valid, has, hist = _batch(seed=1)
    has[4:] = False
    window[4:], valid[4:] = 0.0, False
    a, b = _policy(preset="small", vl_dim=16).train(), _policy(preset="small", vl_dim=16).train()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        a(vl, mask, window, valid, has, hist)
        b(vl[:4], mask[:4], window[:4], valid[:4], has[:4], hist[:4])
    for (name, x), y in zip(a.sensor_encoder.named_buffers(), b.sensor_encoder.buffers()):
        torch.testing.assert_close(x, y, msg=name)


def test_eval_mode_matches_train_mode_on_real_windows_after_mixed_training():
    """Defect 1: after training on batches mixed with no-sensor samples (as at the seed's batch size 1), eval-mode
    outputs on real windows match train-mode ones (the running statistics describe real sensor data)."""
    torch.manual_seed(0)
    p = _policy(preset="small", vl_dim=16).train()
    real = _batch(seed=7)
    with torch.no_grad():
        for i in range(200):  # running stats converge on the real batch; half the batches carry no sensor
            p(*(real if i % 2 == 0 else _batch(sensor=False, seed=i)))
        train_out = p(*real)
        eval_out = p.eval()(*real)
    rel = (eval_out - train_out).norm() / train_out.norm()
    assert rel < 0.05, f"eval differs from train by {rel:.3f} (relative)"
