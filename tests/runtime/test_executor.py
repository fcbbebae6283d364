"""Chunk execution: step choice (first / latency-aware blend / real-time chunking), step, speed and workspace limits
against the one control period, the latched stop, holds, and what the live actuator publishes."""
import numpy as np
import pytest
import zmq

from vla_lib.rig import wire
from vla_lib.runtime.actuators import ActionPublisher
from vla_lib.runtime.configuration_runtime import Limits
from vla_lib.runtime.executor import ChunkExecutor

POSE = np.array([250.0, 0.0, 150.0, 90.0, 0.0, 179.8])
LOOSE = Limits(max_step_mm=100, max_step_deg=100, max_speed_mm_s=1e4, max_speed_deg_s=1e4, out_of_limits_factor=10)


def chunk(first_row, rows=8, step=0.0):
    c = np.zeros((rows, 7))
    c[:, :6] = np.asarray(first_row, float) + step * np.arange(rows)[:, None]
    return c


def run(ex, t_obs, c, t_send, pose=POSE, t_ready=None, holds=()):
    ex.add_chunk(t_obs, c, t_ready)
    return ex.step(t_obs, t_send, pose, list(holds))


def test_first_step_mode_sends_step_zero():
    ex = ChunkExecutor(LOOSE, 0.1, "first")
    cmd = run(ex, 10.0, chunk([0.5, 0, 0, 0, 0, 0], step=1.0), 10.35)
    assert cmd.kind == "move" and cmd.delta[0] == 0.5 and cmd.reasons == []
    np.testing.assert_allclose(cmd.target, POSE + cmd.delta)


def test_blend_picks_the_step_for_the_execution_time_and_weighs_overlapping_chunks():
    ex = ChunkExecutor(LOOSE, 0.1, "blend", blend_decay=0.0, execution_latency_s=0.05)
    # executed at 10.0 + 0.12 + 0.05 = 10.17 -> step 1 of a chunk observed at 10.0 (latency-aware)
    assert run(ex, 10.0, chunk([1, 0, 0, 0, 0, 0], step=1.0), 10.12).delta[0] == pytest.approx(2.0)
    # a second chunk observed at 10.1, executed at 10.27: step 2 of the first (3.0) and step 1 of the second (5.0)
    assert run(ex, 10.1, chunk([4, 0, 0, 0, 0, 0], step=1.0), 10.22).delta[0] == pytest.approx(4.0)
    ex2 = ChunkExecutor(LOOSE, 0.1, "blend", blend_decay=1.0, execution_latency_s=0.0)
    run(ex2, 10.0, chunk([1, 0, 0, 0, 0, 0], step=1.0), 10.1)  # its step 1 = 2.0, k=1
    cmd = run(ex2, 10.1, chunk([5, 0, 0, 0, 0, 0], step=1.0), 10.1)  # step 0 = 5.0, k=0
    w = np.exp(-1.0)
    assert cmd.delta[0] == pytest.approx((w * 2.0 + 5.0) / (w + 1))  # fresher chunk weighs more
    # a chunk too old to cover the execution time contributes nothing: hold
    ex3 = ChunkExecutor(LOOSE, 0.1, "blend")
    cmd = run(ex3, 10.0, chunk([1] * 6), 11.0)
    assert cmd.kind == "hold" and not cmd.delta.any() and cmd.reasons == ["horizon_exhausted"]


def test_rtc_keeps_the_committed_prefix_and_switches_after_the_delay():
    """A chunk inferred with a 200 ms delay: until it is usable the previous chunk's steps go on (the committed
    prefix); then the new chunk from its step 2, never its steps 0-1, which were meant for the past."""
    ex = ChunkExecutor(LOOSE, 0.1, "rtc", execution_latency_s=0.0)
    old = chunk([1, 0, 0, 0, 0, 0], step=1.0)  # steps 1, 2, 3, ...
    new = chunk([10, 0, 0, 0, 0, 0], step=1.0)  # steps 10, 11, 12, ...
    ex.add_chunk(0.0, old, 0.0)
    assert ex.step(0.0, 0.0, POSE).delta[0] == 1.0
    ex.add_chunk(0.1, new, 0.3)  # observed at 0.1, usable at 0.3 (inference delay 2 steps)
    got = [ex.step(t, t, POSE) for t in (0.1, 0.2, 0.3, 0.4)]
    assert [c.delta[0] for c in got] == [2.0, 3.0, 12.0, 13.0]  # old's steps 1-2, then new's steps 2, 3
    assert [c.chunk_step for c in got] == [1, 2, 2, 3] and got[2].delay_steps == pytest.approx(2.0)
    # `first` would execute the new chunk's step 0 (meant for 0.1) at 0.3
    first = ChunkExecutor(LOOSE, 0.1, "first")
    first.add_chunk(0.0, old, 0.0)
    first.add_chunk(0.1, new, 0.3)
    assert first.step(0.3, 0.3, POSE).delta[0] == 10.0
    # the horizon runs out: hold, never a step past the chunk's end
    assert ex.step(1.0, 1.0, POSE).reasons == ["horizon_exhausted"]


def test_a_new_execution_mode_is_one_entry_of_the_registry(monkeypatch):
    """A mode added to `runtime/execution.py` `EXECUTION_MODES` (here: the newest chunk's last step) is a choice of
    `runtime.execution` and runs in the executor, its switch jump measured as the mode says (untimed: step 0)."""
    from vla_lib.runtime import execution
    from vla_lib.runtime.configuration_runtime import RuntimeConfig

    def last(chunks, t_exec, dt, blend_decay):
        cid, _, _, c = chunks[-1]
        return c[-1].copy(), cid, len(c) - 1, []
    monkeypatch.setitem(execution.EXECUTION_MODES, "last", execution.ExecutionMode(last, timed=False))
    assert RuntimeConfig(execution="last").execution == "last"
    ex = ChunkExecutor(LOOSE, 0.1, "last")
    assert run(ex, 0.0, chunk([1, 0, 0, 0, 0, 0], step=1.0), 0.0).delta[0] == 8.0  # step 7: [8, 7, 7, ...]
    cmd = run(ex, 0.1, chunk([10, 0, 0, 0, 0, 0], step=1.0), 0.1)  # step 7: [17, 7, 7, ...]
    # against the previous chunk's step 0 ([1, 0, 0]), not its step for this time ([2, 1, 1])
    assert cmd.delta[0] == 17.0 and cmd.switch_jump_mm_s == pytest.approx(np.linalg.norm([16, 7, 7]) / 0.1)


def test_step_and_speed_limits_use_the_one_control_period():
    lim = Limits(max_step_mm=2.0, max_step_deg=1.0, max_speed_mm_s=100.0, max_speed_deg_s=100.0)
    cmd = run(ChunkExecutor(lim, 0.1), 0, chunk([3.0, 4.0, 0, 0.5, -3.0, 2.0]), 0)
    np.testing.assert_allclose(cmd.delta[:3], [1.2, 1.6, 0.0])  # scaled to norm 2, direction kept
    np.testing.assert_allclose(cmd.delta[3:], [0.5, -1.0, 1.0])
    assert cmd.reasons == ["step_mm", "step_deg"]
    lim = Limits(max_step_mm=50.0, max_step_deg=50.0, max_speed_mm_s=10.0, max_speed_deg_s=5.0)
    cmd = run(ChunkExecutor(lim, 0.1), 0, chunk([0, 0, -3.0, 0, 0, 2.0]), 0)
    np.testing.assert_allclose(cmd.delta, [0, 0, -1.0, 0, 0, 0.5])  # 10 mm/s and 5 deg/s over 100 ms
    assert cmd.target[5] == pytest.approx(-179.7)  # 179.8 + 0.5, wrapped
    # the same speed limit at half the period gives half the step: speed = step / the period that executes it
    cmd = run(ChunkExecutor(lim, 0.05), 0, chunk([0, 0, -3.0, 0, 0, 0]), 0)
    np.testing.assert_allclose(cmd.delta[2], -0.5)


def test_workspace_clips_the_target():
    lim = Limits(max_step_mm=100, max_speed_mm_s=1e4, workspace_min=[0, 0, 149.0], workspace_max=[251, 10, 200])
    cmd = run(ChunkExecutor(lim, 0.1), 0, chunk([5.0, 1.0, -4.0, 0, 0, 0]), 0)
    np.testing.assert_allclose(cmd.delta[:3], [1.0, 1.0, -1.0])
    np.testing.assert_allclose(cmd.target[:3], [251.0, 1.0, 149.0])
    assert "workspace" in cmd.reasons


def test_a_latched_stop_holds_until_released_and_holds_clear():
    ex = ChunkExecutor(LOOSE, 0.1)
    assert run(ex, 0, chunk([1.0] * 6), 0, holds=["sensor_stale"]).kind == "hold"
    assert run(ex, 0, chunk([1.0] * 6), 0, pose=None).reasons == ["no_pose"]
    assert run(ex, 0.1, chunk([1.0] * 6), 0.1).kind == "move"  # moves again when the hold clears
    ex.latch.trip("force 2.0 N above limit", 0.15)
    for t in (0.2, 0.3):
        cmd = run(ex, t, chunk([1.0] * 6), t)
        assert cmd.kind == "stop" and not cmd.delta.any()
    assert ex.latch.release().startswith("force") and run(ex, 0.4, chunk([1.0] * 6), 0.4).kind == "move"


def test_out_of_limits_is_a_chunk_far_beyond_the_step_limit():
    ex = ChunkExecutor(Limits(max_step_mm=2.0, out_of_limits_factor=5.0), 0.1)
    assert not ex.out_of_limits(chunk([0, 0, -9.9, 0, 0, 0]))  # 9.9 mm < 5 x 2 mm: clamped, executed
    assert ex.out_of_limits(chunk([0, 0, -10.1, 0, 0, 0]))


@pytest.mark.parametrize("send", [False, True])
def test_actions_and_stops_leave_the_process_only_with_send_actions(live_cfg, tmp_path, send):
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(live_cfg.action_endpoint)
    pub = ActionPublisher(live_cfg.action_endpoint, send=send, log_path=tmp_path / "a.jsonl")
    ex = ChunkExecutor(LOOSE, 0.1)
    got = []
    try:
        for i in range(40):  # PUB/SUB joins late: publish until one arrives (bounded), or 40 when dry
            pub.apply(run(ex, float(i), chunk([0.5, 0, 0, 0, 0, 0]), float(i)))
            if sub.poll(25):
                got.append(wire.unpack_action(sub.recv_multipart()))
                break
        pub.stop(41.5, "force 2.1 N above limit 1.5 N")
        stop = wire.unpack_stop(sub.recv_multipart()) if send and sub.poll(1000) else None
    finally:
        pub.close()
        sub.close(linger=0)
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    if send:
        assert got and got[0][2][0] == pytest.approx(0.5) and got[0][3][0] == pytest.approx(250.5)
        assert pub.sent == len(lines) - 1 and pub.dry == 0 and '"sent": true' in lines[0]
        assert stop[0] == 41.5 and stop[2].startswith("force")
    else:
        assert not got and pub.sent == 0 and pub.dry == 40 and len(lines) == 41 and '"sent": false' in lines[0]
    assert '"kind": "stop"' in lines[-1] and pub.stops == 1


def test_a_move_decided_before_a_stop_goes_out_as_a_hold(live_cfg):
    """The guard's stop (receiver thread) lands between the tick's step and its publish: what follows the stop on
    the wire moves nothing, until the release."""
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(live_cfg.action_endpoint)
    pub = ActionPublisher(live_cfg.action_endpoint, send=True)
    ex = ChunkExecutor(LOOSE, 0.1)
    try:
        for _ in range(200):  # PUB/SUB joins late: a bounded handshake
            pub.apply(run(ex, 0.0, chunk([0.5, 0, 0, 0, 0, 0]), 0.0))
            if sub.poll(10):
                break
        while sub.poll(50):
            sub.recv_multipart()
        cmd = run(ex, 1.0, chunk([0.5, 0, 0, 0, 0, 0]), 1.0)
        assert cmd.kind == "move"
        pub.stop(1.01, "force")  # ... the guard trips now
        pub.apply(cmd)
        got = [sub.recv_multipart() for _ in range(2) if sub.poll(1000)]
        pub.release()
        pub.apply(run(ex, 1.1, chunk([0.5, 0, 0, 0, 0, 0]), 1.1))
        got += [sub.recv_multipart() for _ in range(2) if sub.poll(1000)]
    finally:
        pub.close()
        sub.close(linger=0)
    assert [g[0] for g in got] == [wire.STOP_TOPIC, wire.ACTION_TOPIC, wire.RELEASE_TOPIC, wire.ACTION_TOPIC]
    assert not wire.unpack_action(got[1])[2].any()  # the stale move went out as zero deltas
    assert wire.unpack_action(got[3])[2][0] == pytest.approx(0.5)  # released: moves again


def test_a_step_that_is_not_finite_after_execution_is_never_emitted():
    """A NaN blend weight (`runtime.blend_decay: .nan`, refused by the config, but set after it was built) turns
    finite chunks into a NaN step: it is the `policy_nonfinite` fault, counted, answered as configured, never a move."""
    from vla_lib.runtime.configuration_runtime import RuntimeConfig
    from vla_lib.runtime.loop import Runtime
    from vla_lib.runtime.robot_io import RecordingActuator

    for response, kind in (("stop", "stop"), ("hold", "hold")):
        cfg = RuntimeConfig(execution="blend", limits=LOOSE)
        cfg.faults.policy_nonfinite = response
        cfg.blend_decay = float("nan")
        runtime = Runtime(cfg, 0.1, RecordingActuator())
        cmd = run(runtime.executor, 10.0, chunk([0.5, 0, 0, 0, 0, 0]), 10.0)
        assert cmd.kind == kind and np.isfinite(cmd.delta).all() and not cmd.delta.any(), cmd
        assert np.isfinite(cmd.target).all() and runtime.events["policy_nonfinite"] == 1
        assert runtime.latch.stopped == (response == "stop")
    bare = ChunkExecutor(LOOSE, 0.1, "blend", blend_decay=float("nan"))  # no runtime: a latched stop
    assert run(bare, 10.0, chunk([0.5, 0, 0, 0, 0, 0]), 10.0).kind == "stop" and bare.latch.stopped
    assert run(ChunkExecutor(LOOSE, 0.1), 10.0, chunk([0.5] * 6), 10.0, pose=np.full(6, np.nan)).kind == "hold"
