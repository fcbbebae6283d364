"""Issue 25's defect "SafetyLimits repeats LiveConfig's defaults and is filled by position": the closed loop, the
replay and `--mode live` each build their Runtime from the config, and its executor and guard must hold the very
`cfg.runtime.limits` object (not a copy, not limits rebuilt from other fields), so what the config says is what is
enforced. Each path is stopped at its `run_loop` call, right after the Runtime is built."""
import numpy as np
import pytest

from vla_lib import live as live_mod
from vla_lib.config import RunConfig
from vla_lib.data.samples import build_index
from vla_lib.evaluation import closed_loop, run as eval_run


class Built(Exception):
    """Raised in place of the control loop, carrying the Runtime it was given."""

    def __init__(self, runtime):
        self.runtime = runtime


def stop_at_loop(policy, io, runtime, *args, **kw):
    raise Built(runtime)


class StubPolicy:
    history_steps = 0

    def warm_up(self, *args, **kw):
        pass


def config(**sections) -> RunConfig:
    return RunConfig.from_dict({"synthetic": {"scenario": "sensor_task", "image_width": 160, "image_height": 90},
                                "data": {"views": ["View1_left"]},
                                "runtime": {"limits": {"max_step_mm": 0.7, "force_limit_n": 1.2}}, **sections})


def assert_holds_config_limits(runtime, cfg):
    limits = cfg.runtime.limits
    assert runtime.executor.limits is limits and runtime.guard.limits is limits and runtime.limits is limits
    assert runtime.executor.dt == cfg.data.action_dt_s  # the one control period
    limits.max_step_mm, limits.max_speed_mm_s = 0.3, 1e3  # a change to the config's limits is what is enforced
    centre = (np.asarray(limits.workspace_min, float) + np.asarray(limits.workspace_max, float)) / 2
    step, reasons = runtime.executor.limit(np.array([1.0, 0, 0, 0, 0, 0]), np.r_[centre, 0, 0, 0])
    assert np.linalg.norm(step[:3]) == pytest.approx(0.3) and reasons == ["step_mm"]


@pytest.mark.parametrize("guard", [None, False])  # guard=False copies the runtime section (dataclasses.replace)
def test_closed_loop_runtime_holds_the_config_limits(guard, monkeypatch):
    cfg = config()
    monkeypatch.setattr(closed_loop, "run_loop", stop_at_loop)
    with pytest.raises(Built) as built:
        closed_loop.run_episode("demonstrator", 1000, cfg, guard=guard)
    assert_holds_config_limits(built.value.runtime, cfg)


def test_replay_runtime_holds_the_config_limits(rig_root, tmp_path, monkeypatch):
    cfg = config(output_root=str(tmp_path))
    cfg.data.root = str(rig_root)
    index = build_index(cfg.data)
    monkeypatch.setattr(eval_run, "run_loop", stop_at_loop)
    with pytest.raises(Built) as built:
        eval_run.run_realtime_replay(cfg, StubPolicy(), held=(index, sorted(index.sessions)[:1]), log=lambda *a: None)
    assert_holds_config_limits(built.value.runtime, cfg)


def test_live_runtime_holds_the_config_limits(live_cfg, tmp_path, monkeypatch):
    cfg = config(output_root=str(tmp_path))
    cfg.live = live_cfg

    def stop_at_run(cfg_, policy, io, runtime, *args, **kw):
        raise Built(runtime)

    monkeypatch.setattr(live_mod, "_run_ready", stop_at_run)
    with pytest.raises(Built) as built:
        live_mod.run_live(cfg, policy=StubPolicy(), log=lambda *a: None)
    assert_holds_config_limits(built.value.runtime, cfg)
