"""The sensor-dependent scenario: the reactive demonstrator reaches the target depth from the sensor alone, whatever
the surface height; a controller blind to the sensor does not; the recorded sessions read back and carry the truth."""
import numpy as np
import pytest

from vla_lib.config import RunConfig
from vla_lib.data.recorder_formats import read_session
from vla_lib.data.timeline import SensorWindow
from vla_lib.data.scenarios import (ReactiveDemonstrator, ScriptedBaseline, contact_force, load_episode, read_sensor,
                                    sample_episode, sensor_task_groups, sensor_values)
from vla_lib.sim.rig import SimRig, run_controller


def _cfg(**task):
    cfg = RunConfig().synthetic
    cfg.scenario = "sensor_task"
    cfg.image_width, cfg.image_height = 64, 36
    for k, v in task.items():
        setattr(cfg.task, k, v)
    return cfg


def _final_depth(controller_cls, ep, cfg):
    rig = SimRig(ep, cfg, views=["View1_left"], data_cfg=RunConfig().data)
    run_controller(controller_cls(cfg.task), rig, cfg.task.episode_s)
    t, depth = rig.depth_trace()
    return depth, contact_force(ep, ep.surface_z - depth)


@pytest.mark.parametrize("offset", [-3.8, -2.0, 0.0, 1.5, 3.8])
def test_demonstrator_reaches_target_depth_from_the_sensor_at_any_surface_height(offset):
    cfg = _cfg()
    ep = sample_episode(cfg.task, 5)
    ep.surface_z = cfg.task.surface_z_nominal + offset
    depth, force = _final_depth(ReactiveDemonstrator, ep, cfg)
    assert abs(depth[-1] - cfg.task.target_depth_mm) < 0.1  # far inside the 0.5 mm tolerance
    assert depth.max() < cfg.task.target_depth_mm + 0.1  # no overshoot
    assert force.max() < cfg.task.force_limit_n
    # blind to the sensor, the same moves miss by the surface offset
    blind, _ = _final_depth(ScriptedBaseline, ep, cfg)
    assert abs(blind[-1] - (cfg.task.target_depth_mm + offset)) < 0.15


def test_demonstrator_uses_only_the_sensor(monkeypatch):
    """With the sensor window replaced by nothing, the demonstrator never slows down: the sensor is what stops it."""
    cfg = _cfg()
    ep = sample_episode(cfg.task, 2)
    monkeypatch.setattr(SimRig, "sensor_window", lambda self: None)
    depth, _ = _final_depth(ReactiveDemonstrator, ep, cfg)
    assert depth[-1] > cfg.task.target_depth_mm + 5


def test_sensor_model_and_its_reading_agree():
    cfg = _cfg()
    ep = sample_episode(cfg.task, 1)
    rng = np.random.default_rng(0)
    for distance in [3.2, 2.0, 0.5, -0.7, -1.5, -2.2]:
        z = np.full(8, ep.surface_z + distance)
        f, a = sensor_values(ep, cfg.task, z, rng)
        d, force = read_sensor(SensorWindow(np.concatenate([f[:, None], a], 1), np.ones(len(f), bool)), cfg.task)
        assert abs(d - distance) < 0.03
        assert abs(force - ep.stiffness * max(0.0, -distance)) < 0.02
    f, a = sensor_values(ep, cfg.task, np.full(8, ep.surface_z + 5.0), rng)  # beyond the OCT's range
    assert read_sensor(SensorWindow(np.concatenate([f[:, None], a], 1), np.ones(len(f), bool)), cfg.task)[0] is None


def test_episodes_vary_surface_and_stiffness_and_are_seeded():
    task = _cfg().task
    eps = [sample_episode(task, s) for s in range(200)]
    surf = np.array([e.surface_z for e in eps]) - task.surface_z_nominal
    assert surf.min() < -3 and surf.max() > 3 and np.abs(surf).max() <= task.surface_range_mm
    k = np.array([e.stiffness for e in eps])
    assert task.stiffness_range[0] <= k.min() < k.max() <= task.stiffness_range[1]
    assert sample_episode(task, 7) == sample_episode(task, 7) != sample_episode(task, 8)


def test_recorded_sessions_read_back_with_demonstrated_depth(tmp_path):
    from vla_lib.data.samples import build_index
    from vla_lib.sim.demonstrations import write_dataset

    cfg = RunConfig.from_dict({"synthetic": {"scenario": "sensor_task", "out_dir": str(tmp_path),
                                             "num_sensor_sessions": 2, "num_nosensor_sessions": 1,
                                             "image_width": 64, "image_height": 36, "seed": 4},
                               "data": {"root": str(tmp_path), "groups": sensor_task_groups()}})
    made = write_dataset(cfg.synthetic)
    assert len(made) == 3
    index = build_index(cfg.data)
    assert index.skipped == [] and index.table.has_sensor.sum() > 0 and (~index.table.has_sensor).sum() > 0
    for path in made[:2]:
        s, ep = read_session(path), load_episode(path)
        depth = ep.surface_z - s.pose[:, 2]  # the recorded demonstrations carry command noise (DART-style)
        assert abs(depth[-1] - cfg.synthetic.task.target_depth_mm) < 0.25
        # the recorded A-line peak follows the tip-to-surface distance where the OCT sees the surface
        st = s.sensor.times + s.sensor_offset()
        z = np.interp(st, s.robot_times, s.pose[:, 2])
        d = z - ep.surface_z
        seen = (d < 3.0) & (d > -2.0)
        peak = np.asarray(s.sensor.alines)[seen].argmax(1)
        assert seen.sum() > 300 and np.corrcoef(peak, d[seen])[0, 1] > 0.99
    # the training targets slow down near the surface: the largest steps are far above it
    steps = -index.targets[:, 0, 2]
    assert steps.max() > 0.4 and np.median(steps[steps > 0.01]) < 0.3


def test_sample_phases_follow_the_demonstration(tmp_path):
    from vla_lib.data.samples import build_index
    from vla_lib.data.scenarios import sample_phases
    from vla_lib.sim.demonstrations import write_dataset

    cfg = RunConfig.from_dict({"synthetic": {"scenario": "sensor_task", "out_dir": str(tmp_path),
                                             "num_sensor_sessions": 1, "num_nosensor_sessions": 1,
                                             "image_width": 64, "image_height": 36, "seed": 5},
                               "data": {"root": str(tmp_path), "groups": sensor_task_groups()}})
    write_dataset(cfg.synthetic)
    index = build_index(cfg.data)
    phases = list(sample_phases(index, cfg.synthetic.task)[index.table.has_sensor.to_numpy()])
    # in time order: descent, approach, insert, hold (first occurrences), ending in hold
    assert list(dict.fromkeys(phases)) == ["descent", "approach", "insert", "hold"] and phases[-1] == "hold"
    steps = -index.targets[index.table.has_sensor.to_numpy(), 0, 2]
    ph = np.array(phases)
    assert np.median(steps[ph == "descent"]) > 0.4 and abs(steps[ph == "hold"]).mean() < 0.06  # hold: noise only
    # the offline per-phase ablation reads these phases, on the samples with sensor only
    from vla_lib.evaluation.offline import sensor_ablation

    all_phases = sample_phases(index, cfg.synthetic.task)
    hold = all_phases == "hold"
    out = sensor_ablation(index.targets + 0.01, index.targets + 0.1 * hold[:, None, None], index.targets,
                          index.target_mask, index.table.has_sensor.to_numpy(), all_phases)["per_phase"]
    assert list(out) == ["descent", "approach", "insert", "hold"]
    assert sum(v["samples"] for v in out.values()) == int(index.table.has_sensor.sum())
    assert out["hold"]["mse_ratio"] == pytest.approx(100.0, rel=1e-3)
    assert out["descent"]["mse_without_sensor"] == 0.0 and out["descent"]["mse_with_sensor"] == pytest.approx(1e-4)


def test_demonstrator_backs_off_when_past_the_target():
    """Started 1 mm past the target depth, the demonstrator comes back to it (the data's way back)."""
    cfg = _cfg()
    ep = sample_episode(cfg.task, 9)
    ep.start[2] = ep.surface_z - cfg.task.target_depth_mm - 1.0
    depth, _ = _final_depth(ReactiveDemonstrator, ep, cfg)
    assert depth[0] == pytest.approx(cfg.task.target_depth_mm + 1.0)
    assert abs(depth[-1] - cfg.task.target_depth_mm) < 0.1
