"""The sensor-rate guard on the simulated rig: a controller that keeps pushing into the tissue at the speed limit is
stopped by the force (or the OCT distance) within the bound the arm's model allows, at the sensor's time rather
than the next action tick; without the guard the same controller pushes far past the limit."""
import numpy as np
import pytest

from vla_lib.config import RunConfig
from vla_lib.errors import ConfigError
from vla_lib.data.scenarios import PREROLL_S, chunk_from_speed, contact_force, oct_distance, sample_episode
from vla_lib.evaluation.closed_loop import ControllerPolicy
from vla_lib.runtime.configuration_runtime import Limits
from vla_lib.runtime.executor import StopLatch
from vla_lib.runtime.guard import SensorGuard
from vla_lib.runtime.loop import Runtime, run_loop
from vla_lib.sim.rig import SimRig

SPEED = 20.0  # mm/s: the default speed limit (runtime.limits.max_speed_mm_s)


def sensor_cfg(**limits):
    return RunConfig.from_dict({
        "synthetic": {"scenario": "sensor_task", "image_width": 160, "image_height": 90},
        "data": {"views": ["View1_left"]},
        "runtime": {"limits": {"force_limit_n": 1.5, **limits}}})


def push(cfg, seed: int, guard: bool = True):
    """A controller that ignores the sensor and descends at the speed limit, through the runtime."""
    task = cfg.synthetic.task
    rig = SimRig(sample_episode(task, seed), cfg.synthetic, views=cfg.data.views, data_cfg=cfg.data)
    cfg.runtime.guard = guard
    runtime = Runtime(cfg.runtime, cfg.data.action_dt_s, rig, oct_distance=lambda a: oct_distance(a, task))
    pusher = ControllerPolicy(lambda io: chunk_from_speed(SPEED, cfg.data.horizon, cfg.data.action_dt_s), rig)
    rig.clock.sleep_until(PREROLL_S)
    run_loop(pusher, rig, runtime, "", 3.0, clock=rig.clock)
    t, depth = rig.depth_trace()
    return rig, runtime, contact_force(rig.ep, rig.ep.surface_z - depth)


def overshoot_bound_s(rig) -> float:
    """Time the tip may still travel after the true crossing: the longest gap between sensor samples (the crossing
    is seen at the next sample), the arm's latency (the stop starts then) and its tracking lag (the pose still closes
    on the frozen set point)."""
    return float(np.diff(rig.sensor_times).max()) + rig.task.action_latency_s + rig.task.tracking_tau_s


@pytest.mark.parametrize("seed", [1000, 1001, 1002])
def test_the_force_guard_stops_a_controller_that_keeps_pushing(seed):
    cfg = sensor_cfg()
    rig, runtime, force = push(cfg, seed)
    bound = rig.ep.stiffness * SPEED * overshoot_bound_s(rig)  # N past the limit the model allows
    assert runtime.latch.stopped and runtime.latch.reason.startswith("force")
    assert force.max() <= 1.5 + bound + 0.05, (force.max(), bound)  # + 5 sigma of the force noise
    stop = rig.stops[0]
    assert stop["freeze_at"] == pytest.approx(stop["t_sample"] + rig.task.action_latency_s)
    # at the sensor's time: the arm froze before the next action tick would even have seen the crossing
    next_tick = PREROLL_S + np.ceil((stop["t_sample"] - PREROLL_S) / 0.1) * 0.1
    assert stop["freeze_at"] < next_tick + rig.task.action_latency_s - 1e-6
    assert runtime.events["stopped_ticks"] > 0 and len(runtime.guard.trips) == 1


def test_without_the_guard_the_same_controller_pushes_far_past_the_limit():
    rig, runtime, force = push(sensor_cfg(), 1000, guard=False)
    assert not runtime.latch.stopped and force.max() > 3 * 1.5


def test_the_oct_guard_stops_at_the_depth_limit():
    cfg = sensor_cfg(force_limit_n=100.0, min_oct_distance_mm=-2.0)
    rig, runtime, _ = push(cfg, 1001)
    assert runtime.latch.reason.startswith("OCT distance")
    depth = rig.depth_trace()[1].max()
    assert 2.0 <= depth <= 2.0 + SPEED * overshoot_bound_s(rig) + 0.05


def test_tare_release_and_one_trip_per_latch():
    latch, stops = StopLatch(), []
    guard = SensorGuard(Limits(force_limit_n=1.0, tare_s=0.1), latch, lambda t, r, kind: stops.append(t))
    t = np.arange(0, 0.2, 0.0015)
    assert not guard.check(t, np.full(len(t), -3.0)) and guard.baseline == -3.0  # tare in free air
    assert not guard.check([0.21, 0.22], [-2.5, -2.1])  # 0.9 N: within
    assert guard.check([0.23, 0.24, 0.25], [-2.0, -1.5, -1.0]) and stops == [0.24]  # the first sample past 1.0 N
    assert not guard.check([0.26], [0.0]) and len(stops) == 1  # latched: one stop
    latch.release()
    assert guard.check([0.27], [0.0]) and stops == [0.24, 0.27]
    fixed = SensorGuard(Limits(force_limit_n=1.0, force_baseline_n=-2.0), StopLatch())
    assert fixed.check([0.0], [-3.2])  # |-3.2 - -2.0| > 1.0, no tare


def test_contact_during_the_tare_trips_instead_of_becoming_the_baseline():
    """Free air at -3 N, then a 3 N contact 9 ms in, inside the 100 ms tare: seen against the first sample, and the
    tare it spoiled is never used as the baseline."""
    latch = StopLatch()
    guard = SensorGuard(Limits(force_limit_n=1.0, tare_s=0.1), latch)
    t = np.arange(0, 0.2, 0.0015)
    f = np.where(t < 0.009, -3.0, 0.0)
    for i in range(0, len(t), 3):  # 3-sample batches, as the rig sends them
        guard.check(t[i:i + 3], f[i:i + 3])
    assert latch.stopped and latch.t == pytest.approx(t[t >= 0.009][0]) and guard.baseline != 0.0
    slow = SensorGuard(Limits(force_limit_n=1.0, tare_s=0.1), StopLatch())  # a slow press below the limit
    ramp = -3.0 + 0.95 * t / 0.05  # 0.95 N within 50 ms, then pressed there: never above the 1 N limit
    for i in range(0, len(t), 3):
        slow.check(t[i:i + 3], np.minimum(ramp[i:i + 3], -2.05))
    assert slow.latch.reason.startswith("tare not in free air")


def test_a_non_finite_force_sample_trips_the_guard():
    latch = StopLatch()
    guard = SensorGuard(Limits(force_limit_n=1.0, force_baseline_n=-3.0), latch)
    assert guard.check([0.0, 0.0015], [-3.0, np.nan]) and latch.reason == "non-finite force sample"


def test_a_trip_during_a_release_is_never_undone():
    """The operator releases while the guard trips (another thread): the stop that wins is never followed by a
    release of the arm."""
    import threading

    events = []
    latch = StopLatch(on_trip=lambda t, r: events.append("stop"), on_release=lambda: events.append("release"))
    guard = SensorGuard(Limits(force_limit_n=1.0, force_baseline_n=-3.0), latch)
    for i in range(200):
        latch.trip("first", 0.0)
        th = threading.Thread(target=guard.check, args=([float(i)], [0.0]))
        th.start()
        latch.release()
        th.join()
        # whatever the interleaving, the actuator's last word matches the latch
        assert events[-1] == ("stop" if latch.stopped else "release")
    assert not StopLatch(on_release=lambda: events.append("x")).release() and events[-1] != "x"  # nothing latched


def test_non_finite_samples_in_the_tare_never_blind_the_guard():
    latch = StopLatch()
    guard = SensorGuard(Limits(force_limit_n=1.0, tare_s=0.1), latch)
    t = np.arange(0, 0.2, 0.0015)
    f = np.full(len(t), -3.0)
    f[0], f[7] = np.nan, np.nan
    for i in range(0, len(t), 3):
        guard.check(t[i:i + 3], f[i:i + 3])
    assert latch.reason == "non-finite force sample" and guard.baseline == pytest.approx(-3.0)
    latch.release()
    assert guard.check([0.3], [2.5])  # 5.5 N above the (finite) baseline


def test_the_live_guard_sees_every_packet_before_the_receiver_drops_any():
    """A NaN force, a crossing whose A-line has a NaN point, and a crossing stamped behind the last sample (a clock
    step) are all dropped from the buffers, and each still trips the stop from the receiver's thread."""
    from vla_lib.rig import wire
    from vla_lib.rig.receivers import SensorReceiver
    from vla_lib.runtime.configuration_runtime import Limits
    from vla_lib.runtime.executor import StopLatch
    from vla_lib.runtime.guard import SensorGuard

    def datagram(ts, force, nan_aline=False):
        alines = np.zeros((len(ts), wire.ALINE_POINTS), np.float32)
        if nan_aline:
            alines[-1, 100] = np.nan
        return wire.pack_sensor(ts, ts, np.asarray(force, np.float32), alines)

    free_t = np.arange(0.0, 0.2, 0.005)  # 40 samples in free air (the sensor reads -3 N there), 10 a datagram
    free_air = [datagram(free_t[k:k + 10], np.full(10, -3.0)) for k in range(0, 40, 10)]
    for bad in (datagram([0.30], [np.nan]), datagram([0.30], [7.0], nan_aline=True), datagram([0.10], [7.0])):
        latch = StopLatch()
        guard = SensorGuard(Limits(force_limit_n=1.5, tare_s=0.1), latch)
        rx = SensorReceiver("127.0.0.1:0")
        rx.on_batch = lambda t, f, a, arrived: guard.check(t, f, a, arrived)
        rx.arrived = 0.0
        for d in free_air:
            rx._handle(d, 0.0)
        assert not latch.stopped and guard.baseline == -3.0
        rx._handle(bad, 0.0)
        assert latch.stopped, latch.reason
        assert rx.n == 40  # none of the bad packets reached the buffers


def test_a_restart_in_contact_cannot_zero_the_contact_force():
    from vla_lib.runtime.configuration_runtime import Limits
    from vla_lib.runtime.executor import StopLatch
    from vla_lib.runtime.guard import SensorGuard

    latch = StopLatch()
    guard = SensorGuard(Limits(force_limit_n=1.5, tare_s=0.1), latch)
    t = np.arange(0.0, 0.2, 0.005)
    guard.check(t, np.full(len(t), 2.0))  # the needle already in tissue at start: 2 N steady
    assert latch.stopped and "free-air" in latch.reason
    with pytest.raises(ConfigError, match="finite"):
        Limits(force_baseline_n=float("nan"))
    with pytest.raises(ConfigError, match="finite"):
        Limits(force_limit_n=float("inf"))


def test_moving_the_robot_needs_every_protection_on():
    from vla_lib.config import RunConfig

    for off in ({"runtime": {"guard": False}}, {"live": {"require_sensor": False}}):
        with pytest.raises(ConfigError, match="send_actions moves the robot"):
            RunConfig.from_dict({**off, "live": {**off.get("live", {}), "send_actions": True}})
        RunConfig.from_dict(off)  # a dry run may measure without them


def test_a_tare_refused_while_the_force_moves_keeps_free_air_as_the_zero():
    """The needle in tissue at start with a rising force: the first sample is contact already. The stop latches at
    once, and after a release the force is still measured from free air, not from a sample taken in contact."""
    latch = StopLatch()
    guard = SensorGuard(Limits(force_limit_n=1.5, tare_s=0.1), latch)
    t = np.arange(0.0, 0.2, 0.005)
    guard.check(t[:1], [1.0])  # 4 N above free air (-3 N) at the first sample
    assert latch.stopped and "free-air" in latch.reason and guard.baseline == -3.0
    latch.release()
    assert guard.check([0.3], [-1.0])  # 2 N of contact: over the 1.5 N limit from free air
    bare = SensorGuard(Limits(force_limit_n=1.5, tare_s=0.1, max_tare_offset_n=None), StopLatch())
    bare.check(t, np.linspace(-3.0, 0.0, len(t)))  # no bound: the force rising during the tare still stops
    assert bare.latch.stopped and bare.baseline == -3.0  # measured from the first sample, never from contact


def test_a_guard_that_raises_latches_the_stop_and_a_nan_stamp_is_still_checked():
    from vla_lib.rig import wire
    from vla_lib.rig.receivers import SensorReceiver

    latch = StopLatch()
    rx = SensorReceiver("127.0.0.1:0")
    rx.arrived = 0.0
    rx.on_batch = lambda *a: (_ for _ in ()).throw(RuntimeError("clock offset unavailable"))
    rx.on_guard_error = lambda e: latch.trip(f"sensor guard error: {e}", 0.0)
    ts = np.array([0.0, 0.005])
    rx._handle(wire.pack_sensor(ts, ts, np.full(2, -3.0, np.float32), np.zeros((2, wire.ALINE_POINTS), np.float32)), 0)
    assert latch.stopped and "guard error" in latch.reason and rx.n == 2  # stopped, and the data still buffered
    guard = SensorGuard(Limits(force_limit_n=1.5, tare_s=0.01), StopLatch())
    rx.on_batch = lambda t, f, a, arrived: guard.check(t, f, a, arrived)
    nan_ts = np.array([np.nan])
    rx._handle(wire.pack_sensor(nan_ts, nan_ts, np.array([5.0], np.float32),
                                np.zeros((1, wire.ALINE_POINTS), np.float32)), 0)
    assert guard.latch.stopped and guard.trips[0]["t_sample"] == 0.005  # the newest finite stamp, not -inf


def test_limits_that_would_hide_contact_or_switch_off_the_workspace_are_refused():
    with pytest.raises(ConfigError, match="force_baseline_n 0 N lies more than max_tare_offset_n"):
        Limits(force_baseline_n=0.0)
    with pytest.raises(ConfigError, match="workspace_max must be finite"):
        Limits(workspace_max=[float("inf"), 1000.0, 1000.0])
    with pytest.raises(ConfigError, match="max_tare_offset_n must be > 0"):
        Limits(max_tare_offset_n=0.0)
    with pytest.raises(ConfigError, match="runtime.limits.max_tare_offset_n must be on"):
        RunConfig.from_dict({"live": {"send_actions": True}, "runtime": {"limits": {"max_tare_offset_n": None}}})


def test_the_operator_cannot_release_while_the_force_is_still_over_the_limit():
    from vla_lib.runtime.loop import ReleaseRefused
    from vla_lib.runtime.robot_io import RecordingActuator

    runtime = Runtime.from_config(sensor_cfg(force_baseline_n=-3.0), RecordingActuator())
    runtime.guard.check([0.0], [-1.0])  # 2 N of contact: over the 1.5 N limit, latched
    assert runtime.latch.stopped
    with pytest.raises(ReleaseRefused, match="withdraw the needle first"):
        runtime.release()
    assert runtime.latch.stopped  # still latched
    runtime.guard.check([0.01], [-2.9])  # withdrawn: 0.1 N
    assert runtime.release().startswith("force") and not runtime.latch.stopped
