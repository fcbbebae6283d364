"""Safe chunk execution: step choice (first / latency-aware blend), step, speed and workspace limits, the latched
force stop, holds on stale streams, and actions leaving the process only with send_actions."""
import numpy as np
import pytest
import zmq

from vla_lib.rig import wire
from vla_lib.rig.safety import ActionPublisher, ChunkExecutor, SafetyLimits

POSE = np.array([250.0, 0.0, 150.0, 90.0, 0.0, 179.8])
FRESH = {"robot": 0.01, "sensor": 0.01}
LOOSE = SafetyLimits(max_step_mm=100, max_step_deg=100, max_speed_mm_s=1e4, max_speed_deg_s=1e4, force_limit=10)


def chunk(first_row, rows=8, step=0.0):
    c = np.zeros((rows, 7))
    c[:, :6] = np.asarray(first_row, float) + step * np.arange(rows)[:, None]
    return c


def test_first_step_mode_sends_step_zero():
    ex = ChunkExecutor(LOOSE, dt=0.1, mode="first")
    rec = ex.step(10.0, chunk([0.5, 0, 0, 0, 0, 0], step=1.0), 10.35, POSE, None, FRESH)
    assert rec["delta"][0] == 0.5 and rec["reasons"] == []
    np.testing.assert_allclose(rec["target"], POSE + rec["delta"])


def test_blend_picks_the_step_for_the_execution_time_and_weighs_overlapping_chunks():
    ex = ChunkExecutor(LOOSE, dt=0.1, mode="blend", blend_decay=0.0, execution_latency_s=0.05)
    # executed at 10.0 + 0.12 + 0.05 = 10.17 -> step 1 of a chunk observed at 10.0 (latency-aware)
    rec = ex.step(10.0, chunk([1, 0, 0, 0, 0, 0], step=1.0), 10.12, POSE, None, FRESH)
    assert rec["delta"][0] == pytest.approx(2.0)
    # a second chunk observed at 10.1, executed at 10.27: step 2 of the first (3.0) and step 1 of the second (5.0)
    rec = ex.step(10.1, chunk([4, 0, 0, 0, 0, 0], step=1.0), 10.22, POSE, None, FRESH)
    assert rec["delta"][0] == pytest.approx(4.0)
    ex2 = ChunkExecutor(LOOSE, dt=0.1, mode="blend", blend_decay=1.0)
    ex2.step(10.0, chunk([1, 0, 0, 0, 0, 0], step=1.0), 10.1, POSE, None, FRESH)  # its step 1 = 2.0, k=1
    rec = ex2.step(10.1, chunk([5, 0, 0, 0, 0, 0], step=1.0), 10.1, POSE, None, FRESH)  # step 0 = 5.0, k=0
    w = np.exp(-1.0)
    assert rec["delta"][0] == pytest.approx((w * 2.0 + 5.0) / (w + 1))  # fresher chunk weighs more
    # a chunk too old to cover the execution time contributes nothing: hold
    ex3 = ChunkExecutor(LOOSE, dt=0.1, mode="blend")
    assert not ex3.step(10.0, chunk([1] * 6), 11.0, POSE, None, FRESH)["delta"].any()


def test_step_and_speed_limits():
    lim = SafetyLimits(max_step_mm=2.0, max_step_deg=1.0, max_speed_mm_s=100.0, max_speed_deg_s=100.0)
    rec = ChunkExecutor(lim, dt=0.1).step(0, chunk([3.0, 4.0, 0, 0.5, -3.0, 2.0]), 0, POSE, None, FRESH)
    np.testing.assert_allclose(rec["delta"][:3], [1.2, 1.6, 0.0])  # scaled to norm 2, direction kept
    np.testing.assert_allclose(rec["delta"][3:], [0.5, -1.0, 1.0])
    assert rec["reasons"] == ["step_mm", "step_deg"]
    lim = SafetyLimits(max_step_mm=50.0, max_step_deg=50.0, max_speed_mm_s=10.0, max_speed_deg_s=5.0)
    rec = ChunkExecutor(lim, dt=0.1).step(0, chunk([0, 0, -3.0, 0, 0, 2.0]), 0, POSE, None, FRESH)
    np.testing.assert_allclose(rec["delta"], [0, 0, -1.0, 0, 0, 0.5])  # 10 mm/s and 5 deg/s over 100 ms
    # the target pose wraps the angle
    assert rec["target"][5] == pytest.approx(-179.7)  # 179.8 + 0.5


def test_workspace_clips_the_target():
    lim = SafetyLimits(max_step_mm=100, max_speed_mm_s=1e4, workspace_min=(0, 0, 149.0), workspace_max=(251, 10, 200))
    rec = ChunkExecutor(lim, dt=0.1).step(0, chunk([5.0, 1.0, -4.0, 0, 0, 0]), 0, POSE, None, FRESH)
    np.testing.assert_allclose(rec["delta"][:3], [1.0, 1.0, -1.0])
    np.testing.assert_allclose(rec["target"][:3], [251.0, 1.0, 149.0])
    assert "workspace" in rec["reasons"]


def test_force_limit_stops_motion_for_good():
    ex = ChunkExecutor(SafetyLimits(force_limit=1.0, max_step_mm=10, max_speed_mm_s=1e3), dt=0.1)
    c = chunk([1.0, 0, 0, 0, 0, 0])
    assert ex.step(0, c, 0, POSE, np.full(10, -3.0), FRESH)["delta"][0] == 1.0  # tare: baseline -3
    assert ex.baseline == -3.0
    assert ex.step(0.1, c, 0.1, POSE, np.array([-3.0, -2.5, -3.1]), FRESH)["delta"][0] == 1.0  # within 1.0
    rec = ex.step(0.2, c, 0.2, POSE, np.array([-3.0, -1.9]), FRESH)  # 1.1 above the baseline
    assert not rec["delta"].any() and rec["reasons"] == ["stopped"] and ex.stopped
    rec = ex.step(0.3, c, 0.3, POSE, np.full(5, -3.0), FRESH)  # back to normal: still stopped (latched)
    assert not rec["delta"].any() and ex.events["force_stop"] == 1
    fixed = ChunkExecutor(SafetyLimits(force_limit=1.0, force_baseline=-2.0), dt=0.1)
    assert fixed.step(0, c, 0, POSE, np.full(3, -3.2), FRESH)["reasons"] == ["stopped"]


@pytest.mark.parametrize("ages, reason", [({"robot": 0.5, "sensor": 0.0}, "stale_robot"),
                                          ({"robot": 0.0, "sensor": None}, "stale_sensor")])
def test_stale_streams_hold(ages, reason):
    ex = ChunkExecutor(LOOSE, dt=0.1)
    rec = ex.step(0, chunk([1.0] * 6), 0, POSE, None, ages)
    assert not rec["delta"].any() and rec["reasons"] == [reason]
    assert ex.step(0, chunk([1.0] * 6), 0, None, None, FRESH)["reasons"] == ["no_pose"]
    assert ex.step(0.1, chunk([1.0] * 6), 0.1, POSE, None, FRESH)["delta"][0] == 1.0  # moves again when fresh


@pytest.mark.parametrize("send", [False, True])
def test_actions_leave_the_process_only_with_send_actions(live_cfg, tmp_path, send):
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, wire.ACTION_TOPIC)
    sub.connect(live_cfg.action_endpoint)
    pub = ActionPublisher(live_cfg.action_endpoint, send=send, log_path=tmp_path / "a.jsonl")
    ex = ChunkExecutor(LOOSE, dt=0.1, publisher=pub)
    got = []
    try:
        for i in range(40):  # PUB/SUB joins late: publish until one arrives (bounded), or 40 when dry
            ex.step(float(i), chunk([0.5, 0, 0, 0, 0, 0]), float(i), POSE, None, FRESH)
            if sub.poll(25):
                got.append(wire.unpack_action(sub.recv_multipart()))
                break
    finally:
        pub.close()
        sub.close(linger=0)
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    if send:
        assert got and got[0][2][0] == pytest.approx(0.5) and got[0][3][0] == pytest.approx(250.5)
        assert pub.sent == len(lines) and pub.dry == 0 and '"sent": true' in lines[0]
    else:
        assert not got and pub.sent == 0 and pub.dry == 40 and len(lines) == 40 and '"sent": false' in lines[0]
