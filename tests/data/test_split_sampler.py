import numpy as np
import pytest

from vla_lib.data.normalization import NormStats, compute_stats
from vla_lib.data.sampler import DistributedWeightedSampler
from vla_lib.data.samples import build_index
from vla_lib.data.split import split_sessions


def test_split_is_by_episode_and_deterministic(data_cfg):
    index = build_index(data_cfg)
    train, val = split_sessions(index, data_cfg)
    assert not set(train) & set(val) and set(train) | set(val) == set(index.sessions)
    assert split_sessions(index, data_cfg) == (train, val)
    assert any(index.sessions[s].has_sensor for s in val) and any(not index.sessions[s].has_sensor for s in val)
    data_cfg.val_sessions = [val[0].split("/")[-1]]
    assert split_sessions(index, data_cfg)[1] == [val[0]]


def test_stats_from_training_split_only(data_cfg, tmp_path):
    index = build_index(data_cfg)
    train, _ = split_sessions(index, data_cfg)
    stats = compute_stats(index.subset(train))
    assert stats.sessions == sorted(train)
    sub = index.subset(train)
    np.testing.assert_allclose(stats.action_mean[:6], sub.targets[..., :6].reshape(-1, 6).mean(0), rtol=1e-5)
    assert stats.action_std[6] == 1.0  # constant gripper: identity scale
    # a real but tiny dimension keeps its own scale (clamped only below the floor), not 1.0
    sub.targets[..., 2] = sub.targets[..., 2] * 1e-3
    tiny = compute_stats(sub)
    assert tiny.action_std[2] == pytest.approx(max(sub.targets[..., 2][sub.target_mask].std(), 1e-3), rel=1e-5)
    assert tiny.action_std[2] < 0.05
    assert -3.2 < stats.force_mean < -2.5
    stats.to_json(tmp_path / "s.json")
    assert NormStats.from_json(tmp_path / "s.json") == stats


def test_group_shares_match_weights():
    weights = np.array([2.0] * 300 + [1.0] * 700)
    s = DistributedWeightedSampler(weights, num_samples=50000, seed=1)
    drawn = s.epoch_indices()
    share = (drawn < 300).mean()
    expected = 600 / 1300
    assert abs(share - expected) < 4 * np.sqrt(expected * (1 - expected) / len(drawn))


def test_ranks_take_disjoint_parts_of_one_draw():
    weights = np.ones(101)
    ranks = [DistributedWeightedSampler(weights, num_replicas=3, rank=r, seed=5) for r in range(3)]
    for r in ranks:
        r.set_epoch(2)
    parts = [list(r) for r in ranks]
    assert len({len(p) for p in parts}) == 1
    full = ranks[0].epoch_indices()
    interleaved = [i for step in zip(*parts) for i in step]  # rank 0, 1, 2, rank 0, ... rebuilds the one draw
    assert interleaved == full.tolist() and len(full) == 3 * len(parts[0]) >= 101
    assert parts[0] != parts[1]
    ranks[0].set_epoch(3)
    assert list(ranks[0]) != parts[0]


def test_resume_mid_epoch_continues_with_the_next_index():
    s = DistributedWeightedSampler(np.ones(50), seed=0)
    s.set_epoch(1)
    full = list(s)
    s2 = DistributedWeightedSampler(np.ones(50), seed=0)
    s2.load_state_dict({"epoch": 1, "position": 20, "seed": 0})
    assert list(s2) == full[20:]


def test_bad_weights_rejected():
    with pytest.raises(ValueError):
        DistributedWeightedSampler([0.0, 0.0])
