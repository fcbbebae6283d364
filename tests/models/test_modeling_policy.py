"""The Stage-1 heads: the `original` preset's pinned parameter counts, the proprioception token, the null sensor."""
import pytest
import torch

from vla_lib.config import RunConfig
from vla_lib.models.inputs import PolicyInputs
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
    no_sensor = torch.zeros(2, 65, 1026), torch.zeros(2, 65, dtype=torch.bool)
    with pytest.raises(ValueError, match="last 4 pose deltas"):
        p(PolicyInputs(vl, mask, *no_sensor, torch.zeros(2, 0, 6)))
    h = torch.zeros(2, 4, 6)
    a = p(PolicyInputs(vl, mask, *no_sensor, h))
    b = p(PolicyInputs(vl, mask, *no_sensor, h + 1.0))
    assert a.shape == (2, 8, 7) and not torch.allclose(a, b)


def test_missing_sensor_uses_the_null_embedding_not_the_window():
    torch.manual_seed(0)
    p = _policy(preset="small", vl_dim=16, history_steps=0).eval()
    vl, mask = torch.randn(2, 6, 16), torch.ones(2, 6, dtype=torch.bool)
    s1, s2 = torch.randn(2, 65, 1026), torch.randn(2, 65, 1026)
    none = torch.zeros(2, 65, dtype=torch.bool)  # no point carries a sample: the sample has no sensor data
    h = torch.zeros(2, 0, 6)
    torch.testing.assert_close(p(PolicyInputs(vl, mask, s1, none, h)), p(PolicyInputs(vl, mask, s2, none, h)))
    valid = torch.ones(2, 65, dtype=torch.bool)
    valid[1] = False
    out1, out2 = p(PolicyInputs(vl, mask, s1, valid, h)), p(PolicyInputs(vl, mask, s2, valid, h))
    assert not torch.allclose(out1[0], out2[0]) and torch.allclose(out1[1], out2[1])


def _batch(b=8, sensor=True, seed=0) -> PolicyInputs:
    g = torch.Generator().manual_seed(seed)
    vl, mask = torch.randn(b, 6, 16, generator=g), torch.ones(b, 6, dtype=torch.bool)
    window = torch.randn(b, 65, 1026, generator=g) * 0.5 - 3.0 if sensor else torch.zeros(b, 65, 1026)
    return PolicyInputs(vl, mask, window, torch.full((b, 65), sensor), torch.randn(b, 4, 6, generator=g))


def test_train_batches_without_sensor_leave_the_encoder_state_untouched():
    """No-sensor samples run through the encoder as zero windows; they must not move its statistics."""
    torch.manual_seed(0)
    p = _policy(preset="small", vl_dim=16).train()
    before = {k: v.clone() for k, v in p.sensor_encoder.state_dict().items()}
    with torch.no_grad():
        for i in range(50):
            p(_batch(sensor=False, seed=i))
    after = p.sensor_encoder.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"{k} changed by batches without sensor data"
    # a mixed batch: the statistics equal those of its sensor rows alone
    x = _batch(seed=1)
    x.sensor[4:], x.sensor_mask[4:] = 0.0, False
    a, b = _policy(preset="small", vl_dim=16).train(), _policy(preset="small", vl_dim=16).train()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        a(x)
        b(PolicyInputs(*(t[:4] for t in x.tensors().values())))
    for (name, x), y in zip(a.sensor_encoder.named_buffers(), b.sensor_encoder.buffers()):
        torch.testing.assert_close(x, y, msg=name)


def test_eval_mode_matches_train_mode_on_real_windows_after_mixed_training():
    """After training on batches mixed with no-sensor samples (as at params/stage1.yaml's batch size 1), eval-mode
    outputs on real windows match train-mode ones (the running statistics describe real sensor data)."""
    torch.manual_seed(0)
    p = _policy(preset="small", vl_dim=16).train()
    real = _batch(seed=7)
    with torch.no_grad():
        for i in range(200):  # running stats converge on the real batch; half the batches carry no sensor
            p(real if i % 2 == 0 else _batch(sensor=False, seed=i))
        train_out = p(real)
        eval_out = p.eval()(real)
    rel = (eval_out - train_out).norm() / train_out.norm()
    assert rel < 0.05, f"eval differs from train by {rel:.3f} (relative)"


def test_masked_batch_norm_equals_batch_norm_when_every_point_counts_also_under_bf16_autocast():
    """The masked statistics are BatchNorm's when nothing is masked; computed in fp32 under autocast, returned in the
    input's dtype."""
    from vla_lib.models.modeling_policy import MaskedBatchNorm1d

    torch.manual_seed(0)
    x = torch.randn(4, 8, 33) * 3 + 1
    ref, masked = torch.nn.BatchNorm1d(8).train(), MaskedBatchNorm1d(8).train()
    torch.testing.assert_close(masked(x, torch.ones(4, 33)), ref(x))
    torch.testing.assert_close(masked.running_var, ref.running_var)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = masked(x.bfloat16(), torch.ones(4, 33))
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref.train()(x), atol=0.05, rtol=0.02)


def test_sensor_mask_follows_each_convolutions_receptive_field():
    """A point after a stride-2 conv counts exactly when its kernel saw a counted input point (the conv itself says
    which: an all-ones kernel over the mask), for odd and even window lengths (an adaptive pool matches only the
    odd ones; compiled on CUDA it gave NaN gradients)."""
    from vla_lib.models.modeling_policy import _receptive_mask

    conv = torch.nn.Conv1d(1, 1, 3, stride=2, padding=1, bias=False)
    torch.nn.init.ones_(conv.weight)
    gen = torch.Generator().manual_seed(0)
    seen = (torch.rand(16, 65, generator=gen) > 0.8).float()
    seen[0], seen[1, :] = 0.0, 1.0  # no point, every point
    seen[2], seen[2, 64] = 0.0, 1.0  # only the last point
    expected = (conv(seen.unsqueeze(1)).squeeze(1) > 0).float()
    got = _receptive_mask(seen, conv)
    assert got.shape == (16, 33) and torch.equal(got, expected)
    assert got[2].sum() == 1 and got[2, 32] == 1
    even = seen[:, :64]
    assert torch.equal(_receptive_mask(even, conv), (conv(even.unsqueeze(1)).squeeze(1) > 0).float())
