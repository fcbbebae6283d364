"""Metrics and baselines against values computed by hand."""
import numpy as np
import pytest

from vla_lib.data.samples import build_index
from vla_lib.evaluation.baselines import last_delta_baseline, train_mean_baseline, zero_baseline
from vla_lib.evaluation.metrics import chunk_metrics, correlation_per_dim


def test_chunk_metrics_by_hand():
    true = np.zeros((2, 3, 7))
    pred = np.zeros((2, 3, 7))
    pred[0, 0, 0] = 2.0  # sample 0, step 0, dx: error 2
    pred[1, 2, 3] = -4.0  # sample 1, step 2 (masked out): must not count
    pred[1, 1, 6] = 9.0  # the gripper: never counts
    pred[1, 0, 5] = 1.0  # sample 1, step 0, dr: error 1
    mask = np.array([[True, True, True], [True, True, False]])
    m = chunk_metrics(pred, true, mask)
    n = 5 * 6  # valid (sample, step) pairs x pose dims
    assert m["mse"] == pytest.approx((4 + 1) / n)
    assert m["mae"] == pytest.approx((2 + 1) / n)
    assert m["mse_per_dim"]["dx_mm"] == pytest.approx(4 / 5) and m["mse_per_dim"]["dr_deg"] == pytest.approx(1 / 5)
    assert m["mse_per_dim"]["da_deg"] == 0.0  # the masked error of -4 left no trace
    assert m["mse_per_step"] == pytest.approx([(4 + 1) / 12, 0.0, 0.0])
    assert m["first_step_mse"] == pytest.approx(5 / 12) and m["first_step_mae"] == pytest.approx(3 / 12)


def test_correlation_is_none_for_a_constant_predictor():
    t = np.linspace(0, 1, 20)
    true = np.stack([np.sin(6 * t)] * 6, 1)
    corr = correlation_per_dim(2 * true + 1, true)
    assert corr == pytest.approx([1.0] * 6)
    assert correlation_per_dim(np.zeros_like(true), true) == [None] * 6


def test_baselines(data_cfg):
    index = build_index(data_cfg)
    z = zero_baseline(4, 8, 1.0)
    assert (z[..., :6] == 0).all() and (z[..., 6] == 1.0).all()
    m = train_mean_baseline(3, 8, [1, 2, 3, 4, 5, 6, 1])
    assert m.shape == (3, 8, 7) and (m[2, 5] == [1, 2, 3, 4, 5, 6, 1]).all()
    last = last_delta_baseline(index, data_cfg)
    # every step repeats the delta of the 100 ms *before* t: exactly the previous sample's first target step when
    # anchors are 100 ms apart within a session
    same = (index.table.session_id.to_numpy()[1:] == index.table.session_id.to_numpy()[:-1])
    np.testing.assert_allclose(last[1:][same, 0, :6], index.targets[:-1][same, 0, :6], atol=1e-4)
    assert (last[:, 3] == last[:, 0]).all()
