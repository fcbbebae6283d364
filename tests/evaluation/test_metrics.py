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
    # independently: the robot's own last 100 ms delta from the samples stamped at or before t (a live robot has no
    # later sample), the same for every step of the chunk
    for i in range(0, len(index), 37):
        s = index.sessions[index.table.session_id[i]]
        t = index.table.t[i]
        known = s.robot_times <= t
        rt, pose = s.robot_times[known], s.pose[known]
        before = np.array([np.interp(rt[-1] - 0.1, rt, pose[:, d]) for d in range(6)])
        expected = pose[-1] - before  # from the last robot sample at or before t, over a full 100 ms
        expected[3:] = (expected[3:] + 180) % 360 - 180
        np.testing.assert_allclose(last[i, 0, :6], expected, atol=1e-3)
        assert (last[i] == last[i, 0]).all()


def test_sensor_ablation_counts_sensor_samples_only():
    """Samples without sensor data predict the same with and without it; they must not dilute the ratio."""
    from vla_lib.evaluation.offline import sensor_ablation

    rng = np.random.default_rng(0)
    target = rng.normal(size=(40, 8, 7)).astype(np.float32)
    mask = np.ones((40, 8), bool)
    has = np.arange(40) < 10
    phases = np.array(["approach", "insert"] * 20, object)
    with_s = target + 0.1
    without = target + np.where(has[:, None, None], 0.3, 0.1)  # worse only where the sensor exists
    out = sensor_ablation(with_s, without, target, mask, has, phases)
    assert out["samples"] == 10 and out["mse_ratio"] == pytest.approx(9.0, rel=1e-4)
    assert set(out["per_phase"]) == {"approach", "insert"}
    assert out["per_phase"]["insert"]["samples"] == 5 and out["per_phase"]["insert"]["mse_ratio"] == pytest.approx(9.0, rel=1e-4)
