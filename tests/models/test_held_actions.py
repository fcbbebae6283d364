"""Action dimensions the training split never moved are returned as their constant, not as a learned output."""
import numpy as np
import torch

from vla_lib.config import RunConfig
from vla_lib.data.normalization import NormStats, compute_stats
from vla_lib.data.samples import build_index
from vla_lib.models.inputs import PolicyInputs
from vla_lib.models.modeling_policy import Stage1Policy
from vla_lib.policy.checkpoint import load_checkpoint, save_checkpoint

MEAN, STD = [0.0, 0.0, -0.5, 0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 0.4, 1.0, 1.0, 1.0, 1.0]
HELD = [True, True, False, True, True, True, True]  # a task that moves along z only (the synthetic insertion)


def _stats(held=HELD) -> NormStats:
    return NormStats(MEAN, STD, {}, -3.0, 0.1, [0.0] * 1025, [1.0] * 1025, ["s"], held)


def _heads(stats: NormStats) -> tuple[Stage1Policy, RunConfig]:
    cfg = RunConfig.from_dict({"model": {"preset": "small", "vl_dim": 16}})
    torch.manual_seed(0)
    return Stage1Policy(cfg.model, **stats.model_buffers()).eval(), cfg


def _inputs(b=3) -> PolicyInputs:
    g = torch.Generator().manual_seed(1)
    return PolicyInputs(torch.randn(b, 6, 16, generator=g), torch.ones(b, 6, dtype=torch.bool),
                        torch.randn(b, 65, 1026, generator=g), torch.ones(b, 65, dtype=torch.bool),
                        torch.randn(b, 4, 6, generator=g))


def test_a_dimension_constant_in_training_is_predicted_as_its_constant():
    heads, _ = _heads(_stats())
    out = heads.predict(_inputs())
    held = torch.tensor(HELD)
    torch.testing.assert_close(out[..., held], torch.tensor(MEAN)[held].expand(3, 8, -1))
    assert (out[..., 2] != MEAN[2]).all()  # z moved in training: the heads' own output
    free, _ = _heads(_stats(held=None))  # stats written before the field: the gripper alone is held
    assert (free.predict(_inputs())[..., :6] != torch.tensor(MEAN[:6])).all()


def test_compute_stats_marks_exactly_the_dimensions_that_never_changed(data_cfg):
    index = build_index(data_cfg, verbose=False)
    index.targets[..., 1] = 0.25  # a pose axis this recording never moved (a held rotation, a z-only task)
    stats = compute_stats(index)
    moved = index.targets[index.target_mask].std(0) > 0
    assert not moved[1] and moved[[0, 2]].all()
    assert np.array_equal(stats.held_actions(), ~moved | (np.arange(7) >= 6))


def test_held_dimensions_round_trip_and_old_checkpoints_hold_the_gripper_alone(tmp_path):
    heads, cfg = _heads(_stats())
    save_checkpoint(tmp_path / "new.pt", heads, _stats(), cfg, 1, 1, 0.0)
    torch.testing.assert_close(load_checkpoint(tmp_path / "new.pt").heads.predict(_inputs()), heads.predict(_inputs()))
    blob = torch.load(tmp_path / "new.pt", weights_only=True)  # heads saved before `action_held` existed
    del blob["model_state_dict"]["action_held"]
    torch.save(blob, tmp_path / "old.pt")
    old = load_checkpoint(tmp_path / "old.pt").heads
    assert old.action_held.tolist() == [False] * 6 + [True]


def test_training_builds_its_heads_with_the_held_dimensions():
    from vla_lib.train_data import build_model

    cfg = RunConfig.from_dict({"model": {"preset": "small"}})
    assert build_model(cfg, _stats(), 16).action_held.tolist() == HELD
