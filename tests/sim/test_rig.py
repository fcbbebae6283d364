"""The simulated rig: one simulated clock, streams at their rates, nothing from the future, the arm's lag and latency,
and the real-time loop running on it deterministically without wall-clock sleeps."""
import time

import numpy as np
import pytest

from vla_lib.config import RunConfig
from vla_lib.data.timeline import pose_history
from vla_lib.data.scenarios import chunk_from_speed, sample_episode
from vla_lib.data.timeline import resample_sensor_window
from vla_lib.sim.rig import SimRig


def _rig(seed=3, views=("View1_left", "View5")):
    cfg = RunConfig()
    cfg.synthetic.image_width, cfg.synthetic.image_height = 64, 36
    return SimRig(sample_episode(cfg.synthetic.task, seed), cfg.synthetic, views=list(views), data_cfg=cfg.data), cfg


def test_stream_rates():
    rig, cfg = _rig()
    rig.clock.sleep_until(5.0)
    st = rig.sensor_log()[0]
    rate = (len(st) - 1) / (st[-1] - st[0])
    assert 600 < rate < 650 and np.diff(st).max() > 0.008  # 650 Hz minus 2 % drops and a few lost bursts
    assert np.all(np.diff(st) > 0) and st[-1] <= 5.0
    t, pose = rig.robot_log()
    assert abs(np.median(np.diff(t)) - 0.01) < 1e-9 and t[-1] <= 5.0
    for key, times in rig.cameras.capture_times.items():
        assert 1.9 < 1 / np.median(np.diff(times)) < 2.1
    skews = [times[0] for times in rig.cameras.capture_times.values()]
    assert max(skews) - min(skews) > 1e-3  # views fire at different times


def test_nothing_from_the_future():
    """What the rig serves at t equals what the complete log, cut at t, gives: later samples never leak in and
    earlier ones never change."""
    rig, cfg = _rig()
    served = []
    for i in range(1, 40):
        t = 0.3 + 0.1 * i
        rig.clock.sleep_until(t)
        rig.send_action(t, chunk_from_speed(3.0 if i < 25 else 0.0, 8, 0.1))
        images, ident, captured = rig.views()
        assert captured <= t and rig.sensor_log()[0][-1] <= t and rig.robot_log()[0][-1] <= t
        for key, j in zip(["View1_left", "View5"], ident):
            times = rig.cameras.capture_times[(1, "left") if key == "View1_left" else (5, "oak")]
            assert times[j] <= t and (j + 1 == len(times) or times[j + 1] > t)
        served.append((t, rig.sensor_window(), rig.pose_history(4), np.asarray(images[0]).copy(), ident))
    rig.finish()
    st, forces, alines = rig.sensor_log()
    rt, pose = rig.robot_log()
    c = cfg.data
    for t, window, history, image, ident in served:
        w, valid, _ = resample_sensor_window(st[st <= t], forces[st <= t], alines[st <= t], t, c.sensor_window_s,
                                             c.sensor_window_size, c.sensor_max_gap_s)
        np.testing.assert_array_equal(window.valid, valid)
        np.testing.assert_array_equal(window.values, w)
        np.testing.assert_allclose(history, pose_history(rt[rt <= t], pose[rt <= t], [t], 4, 0.1)[0], atol=1e-9)
        # the frame shows the needle where it was at the frame's capture time
        t_cap = rig.cameras.capture_times[(1, "left")][ident[0]]
        again = rig.cameras.render(1, "left", ident[0], rig.tip_at(t_cap))
        np.testing.assert_array_equal(image, np.asarray(again))
    with pytest.raises(ValueError, match="future"):
        rig.tip_at(rig.now() + 0.05)


def test_action_latency_and_tracking_lag():
    rig, cfg = _rig()
    task = cfg.synthetic.task
    rig.clock.sleep_until(1.0)
    z0 = rig.tip_at(1.0)[2]
    rig.send_action(1.0, chunk_from_speed(5.0, 8, 0.1))  # 0.5 mm down over one period
    rig.clock.sleep_until(1.0 + task.action_latency_s - 0.002)
    assert rig.tip_at(rig.now())[2] == pytest.approx(z0, abs=1e-9)  # nothing moves before the latency
    rig.clock.sleep_until(1.0 + task.action_latency_s + 0.1)
    moved = z0 - rig.tip_at(rig.now())[2]
    assert 0.2 < moved < 0.45  # lags behind the 0.5 mm set point
    rig.clock.sleep_until(2.0)
    assert z0 - rig.tip_at(2.0)[2] == pytest.approx(0.5, abs=1e-3)  # one command, one step, then at rest


class _Scripted:
    """A stand-in policy: fixed descent, records what it was given."""

    history_steps = 4

    def __init__(self):
        self.encoded, self.acted = 0, []

    def encode(self, instructions, views):
        import torch

        self.encoded += 1
        return torch.zeros(1, 3, 8), torch.ones(1, 3, dtype=torch.bool)

    def act(self, feats, mask, window, history, contact=None):
        self.acted.append((window, history))
        return chunk_from_speed(1.0, 8, 0.1)[None]


def test_realtime_loop_runs_on_the_simulated_clock(monkeypatch):
    from vla_lib.runtime.loop import Runtime, run_loop

    monkeypatch.setattr(time, "sleep", lambda s: (_ for _ in ()).throw(AssertionError("wall-clock sleep")))
    rig, cfg = _rig()
    rig.clock.sleep_until(0.2)
    policy = _Scripted()
    started = time.perf_counter()
    report = run_loop(policy, rig, Runtime.from_config(cfg, rig), "insert", 3.0, clock=rig.clock, vl_latency_s=0.15)
    assert time.perf_counter() - started < 20  # 3 s of robot time, no waiting
    ticks = np.array([t["t"] for t in report.ticks])
    np.testing.assert_allclose(ticks, 0.2 + 0.1 * np.arange(30), atol=1e-9)  # exactly 10 Hz on the sim clock
    assert rig.now() == pytest.approx(3.2)
    # VL refreshed at the camera rate (two views with skew: about two frame sets per 0.5 s), features never newer
    # than their frames, and usable only after the modelled latency
    assert 6 <= policy.encoded <= 16 and len(report.refreshes) == policy.encoded
    assert all(t["staleness_s"] >= 0 and t["feature_age_s"] >= -1e-9 for t in report.ticks)
    assert all(len(rig.executed) == 30 and c.t == pytest.approx(b) for c, b in zip(rig.executed, ticks))
    # the arm followed: 1 mm/s for ~3 s
    assert 2.5 < rig.ep.start[2] - rig.robot_pose()[2] < 3.1
    assert report.summary["clock"] == "simulated" and report.summary["action_steps"] == 30
