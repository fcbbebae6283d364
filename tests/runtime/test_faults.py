"""Each fault rehearsed on the simulated rig, through the runtime the robot uses: the configured response (hold,
stop, continue) is what the arm does, and every fault is counted per kind."""
import numpy as np
import pytest

from vla_lib.config import RunConfig
from vla_lib.evaluation.closed_loop import run_episode
from vla_lib.sim.fault_injection import Faults

AT = 0.6  # s on the rig's clock: the demonstrator is descending (it starts at 0.2 s; the episode runs to 6.2 s)


def cfg_with(**faults):
    return RunConfig.from_dict({
        "synthetic": {"scenario": "sensor_task", "image_width": 160, "image_height": 90},
        "data": {"views": ["View1_left", "View2_left"]},
        "runtime": {"limits": {"force_limit_n": 1.5, "max_feature_age_s": 1.0}, "faults": faults}})


def episode(cfg, **at):
    result = run_episode("demonstrator", 1000, cfg, faults=Faults(**at))
    return result, result.report


def moved_after(result, t0: float) -> float:
    """mm the tip travelled after t0 + the arm's latency + a few tracking time constants."""
    t, depth = result.trace["t"] + 0.2, result.trace["depth_mm"]
    late = depth[t >= t0 + 0.03 + 0.25]
    return float(np.ptp(late)) if len(late) else 0.0


def test_no_fault_no_intervention():
    result, report = episode(cfg_with())
    assert result.success and report["stopped"] is None
    assert not {k: v for k, v in report["interventions"].items() if k not in ("step_mm",)}


@pytest.mark.parametrize("fault, kind, response", [
    ({"sensor_invalid_at": AT}, "sensor_invalid", "hold"),
    ({"cameras_stop_at": AT}, "camera_stale", "hold"),
    ({"vl_stalls_at": AT}, "vl_stall", "hold"),
    ({"robot_stops_at": AT}, "robot_stale", "stop"),
    ({"vl_raises_at": AT}, "vl_error", "stop"),
    ({"nan_at": AT}, "policy_nonfinite", "stop"),
    ({"jump_at": AT}, "policy_out_of_limits", "stop"),
])
def test_each_fault_gets_its_configured_response(fault, kind, response):
    result, report = episode(cfg_with(), **fault)
    assert report["interventions"].get(kind, 0) > 0, report["interventions"]
    first = next(f for f in report["faults_first"] if f["kind"] == kind)
    assert first["response"] == response and first["t"] >= AT - 1e-9
    if response == "stop":
        assert report["stopped"].startswith(kind) and report["interventions"]["stopped_ticks"] > 0
    else:
        assert report["stopped"] is None
    assert moved_after(result, first["t"]) < 0.05  # held or stopped: the arm stays where the fault found it
    if response == "hold":  # the same fault answered with `continue`: counted, and the steps go on
        result, report = episode(cfg_with(**{kind: "continue"}), **fault)
        first = next(f for f in report["faults_first"] if f["kind"] == kind)
        assert first["response"] == "continue"
        # blind to the tissue (an invalid window reads as "no surface"), the demonstrator descends at full speed:
        # the guard, which sees the sensor's samples themselves, stops it at the force limit
        assert report["stopped"] is None or (kind == "sensor_invalid" and report["stopped"].startswith("force"))


def test_a_sensor_stream_that_stops_is_stopped_by_the_watchdog_before_the_tick_sees_it_stale():
    """The sensor stops: the guard's watchdog latches the stop (`sensor_gap`) once no sample came for
    limits.max_sensor_gap_s, on the rig's clock; the tick's `sensor_stale` (hold, 0.25 s) is still counted after it,
    and answering it with `continue` does not let the arm move on."""
    gap, check = cfg_with().runtime.limits.max_sensor_gap_s, 0.006  # the rig watches every 3 x 2 ms of physics
    for stale in ("hold", "continue"):
        result, report = episode(cfg_with(sensor_stale=stale), sensor_stops_at=AT)
        assert report["stopped"].startswith("sensor gap") and report["interventions"]["sensor_gap"] == 1
        trip = report["guard_trips"][0]
        assert trip["kind"] == "sensor_gap" and AT < trip["t_sample"] <= AT + gap + check + 1e-9
        assert report["interventions"]["sensor_stale"] > 0 and report["interventions"]["stopped_ticks"] > 0
        assert moved_after(result, trip["t_sample"]) < 0.05


def test_a_tick_overrun_is_counted_and_answered_on_the_next_tick():
    result, report = episode(cfg_with(), overrun_at=AT)
    assert report["interventions"]["tick_overrun"] == 1 and report["stopped"] is None  # continue (the default)
    result, report = episode(cfg_with(tick_overrun="stop"), overrun_at=AT)
    assert report["stopped"].startswith("tick_overrun")


def test_a_released_stop_moves_the_arm_again():
    """A latched stop freezes the arm until the operator's release, and only then does it move again."""
    from vla_lib.data.scenarios import PREROLL_S, ReactiveDemonstrator, sample_episode
    from vla_lib.evaluation.closed_loop import ControllerPolicy
    from vla_lib.runtime.loop import Features, Runtime
    from vla_lib.sim.rig import SimRig

    cfg = cfg_with()
    rig = SimRig(sample_episode(cfg.synthetic.task, 1000), cfg.synthetic, views=cfg.data.views, data_cfg=cfg.data)
    runtime = Runtime(cfg.runtime, 0.1, rig)
    policy = ControllerPolicy(ReactiveDemonstrator(cfg.synthetic.task), rig)

    def ticks(n):
        kinds = []
        for _ in range(n):
            kinds.append(runtime.tick(policy, rig, Features(captured=rig.now()), simulated=True)["command"].kind)
            rig.clock.sleep_until(rig.now() + 0.1)
        return kinds

    rig.clock.sleep_until(PREROLL_S)
    runtime.fault("robot_stale", PREROLL_S, "rehearsal")
    z0 = rig.robot_pose()[2]
    assert ticks(5) == ["stop"] * 5 and abs(rig.robot_pose()[2] - z0) < 1e-6  # stopped: not a micron
    assert runtime.release().startswith("robot_stale")
    z1 = rig.robot_pose()[2]
    assert ticks(5) == ["move"] * 5 and z1 - rig.robot_pose()[2] > 1.0  # descending again (5 mm/s)
