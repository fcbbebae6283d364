"""The sensor-rate watchdog: no sensor sample for longer than `runtime.limits.max_sensor_gap_s` latches the stop
(`sensor_gap`) without waiting for the action tick's `sensor_stale` (0.25 s): on the simulated clock from the rig's
physics, live in a thread of its own. Nominal sensor loss never trips it."""
import socket
import time

import numpy as np

from vla_lib.config import RunConfig
from vla_lib.config_sections import DataConfig
from vla_lib.data.perturbations import apply_perturbation
from vla_lib.data.scenarios import PREROLL_S, chunk_from_speed, sample_episode
from vla_lib.evaluation.closed_loop import ControllerPolicy
from vla_lib.rig import wire
from vla_lib.rig.receivers import parse_udp_endpoint
from vla_lib.runtime.configuration_runtime import Limits
from vla_lib.runtime.executor import StopLatch
from vla_lib.runtime.guard import SensorGuard
from vla_lib.runtime.loop import Runtime, run_loop
from vla_lib.sim.rig import INTERNAL_DT, SENSE_EVERY, SimRig

GAP = Limits().max_sensor_gap_s
CHECK = SENSE_EVERY * INTERNAL_DT  # the rig's physics hands the guard its samples, and watches, this often
SPEED = 20.0  # mm/s, the default speed limit


def sensor_cfg():
    return RunConfig.from_dict({"synthetic": {"scenario": "sensor_task", "image_width": 160, "image_height": 90},
                                "data": {"views": ["View1_left"]}, "runtime": {"limits": {"force_limit_n": 1.5}}})


def test_a_loss_burst_longer_than_the_gap_stops_the_arm_on_the_simulated_clock():
    cfg = sensor_cfg()
    rig = SimRig(sample_episode(cfg.synthetic.task, 1000), cfg.synthetic, views=cfg.data.views, data_cfg=cfg.data)
    start = 0.33  # tared, descending in free air at the speed limit
    keep = ~((rig.sensor_times > start) & (rig.sensor_times < start + 3 * GAP))  # a burst of 3 gaps
    rig.sensor_times, rig.forces, rig.alines = rig.sensor_times[keep], rig.forces[keep], rig.alines[keep]
    runtime = Runtime(cfg.runtime, cfg.data.action_dt_s, rig)
    pusher = ControllerPolicy(lambda io: chunk_from_speed(SPEED, cfg.data.horizon, cfg.data.action_dt_s), rig)
    rig.clock.sleep_until(PREROLL_S)
    run_loop(pusher, rig, runtime, "", 1.0, clock=rig.clock)
    assert runtime.latch.reason.startswith("sensor gap"), runtime.latch.reason
    trip, stop = runtime.guard.trips[0], rig.stops[0]
    last = rig.sensor_times[rig.sensor_times <= start][-1]
    assert trip["kind"] == "sensor_gap" and trip["t_last_sample"] == last
    assert GAP < trip["gap_s"] <= GAP + CHECK + 1e-9  # noticed within one physics check of the gap
    assert runtime.events["sensor_gap"] == 1 and "guard_stop" not in runtime.events
    assert stop["freeze_at"] == trip["t_sample"] + rig.task.action_latency_s < start + 3 * GAP  # inside the burst
    # the bound: the tip moves at most v x (gap + check + the arm's latency + tracking lag) past the last sample
    t, depth = rig.depth_trace()
    moved = depth[-1] - np.interp(last, t, depth)
    bound = SPEED * (GAP + CHECK + rig.task.action_latency_s + rig.task.tracking_tau_s)
    assert 0 < moved <= bound, (moved, bound)


def test_nominal_sensor_loss_never_trips_the_watchdog_and_the_milder_packet_loss_levels_do_not_either():
    # the nominal stream's worst case: two 25 ms bursts (16 packets) back to back, 33 sample periods at 650 Hz
    assert 33 / 650 * 1.05 < GAP
    base = sensor_cfg()
    for cfg in (base, apply_perturbation(base, "packet_loss", "10%"), apply_perturbation(base, "packet_loss", "30%")):
        for seed in range(1000, 1050):
            rig = SimRig(sample_episode(cfg.synthetic.task, seed), cfg.synthetic, views=[], data_cfg=cfg.data)
            assert np.diff(rig.sensor_times).max() < GAP, (cfg.synthetic.task.sensor_drop_fraction, seed)


def test_the_live_watchdog_stops_the_arm_when_datagrams_stop(live_cfg):
    """Over loopback: the real sensor receiver and `LiveRobotIO.attach_guard`'s watchdog thread, no control loop."""
    from vla_lib.runtime.live_io import LiveRobotIO

    gap = 0.1  # wider than the default: a test sender on a busy 2-core box may pause for tens of ms
    latch = StopLatch()
    guard = SensorGuard(Limits(force_limit_n=1.5, force_baseline_n=-3.0, max_sensor_gap_s=gap), latch)
    io = LiveRobotIO(live_cfg, DataConfig()).start()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        io.attach_guard(guard)
        target, t = parse_udp_endpoint(live_cfg.sensor_endpoint), 0.0
        for _ in range(60):  # 0.3 s of 5 ms datagrams: no stop
            stamps = t + np.arange(3) / 650.0
            udp.sendto(wire.pack_sensor(stamps, time.time(), np.full(3, -3.0, np.float32),
                                        np.zeros((3, wire.ALINE_POINTS), np.float32)), target)
            t += 3 / 650.0
            time.sleep(0.005)
        assert guard.samples > 0 and not latch.stopped, latch.reason
        deadline = time.time() + 2.0  # the stream stops: the watchdog, not a tick, stops the arm
        while not latch.stopped and time.time() < deadline:
            time.sleep(0.005)
        assert latch.stopped and latch.reason.startswith("sensor gap"), latch.reason
        trip = guard.trips[0]
        assert trip["kind"] == "sensor_gap" and gap < trip["gap_s"] < gap + gap / 8 + 0.05, trip
    finally:
        udp.close()
        io.stop()


def test_release_is_refused_while_the_sensor_is_silent_and_accepted_once_it_speaks_again():
    """After a sensor-gap stop the operator cannot release into a silent stream (the arm would move unsupervised
    until the watchdog's next look); a fresh sample makes the release possible."""
    from vla_lib.runtime.loop import ReleaseRefused

    cfg = sensor_cfg()
    rig = SimRig(sample_episode(cfg.synthetic.task, 1000), cfg.synthetic, views=cfg.data.views, data_cfg=cfg.data)
    runtime = Runtime(cfg.runtime, cfg.data.action_dt_s, rig)
    guard = runtime.guard
    air = cfg.runtime.limits.free_air_force_n  # free air: no force trip, only the silence after it
    assert not guard.check(np.array([0.40, 0.41]), np.array([air, air]))
    assert guard.watch(0.41 + GAP + 0.01) and runtime.latch.stopped
    try:
        runtime.release(now=0.41 + GAP + 0.02)
        raise AssertionError("released into a silent sensor stream")
    except ReleaseRefused as e:
        assert "no sensor sample" in str(e)
    guard.check(np.array([0.48]), np.array([air]))
    assert runtime.release(now=0.481).startswith("sensor gap") and not runtime.latch.stopped
