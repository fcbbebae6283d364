"""A short loopback run: simulated senders replay a session over the wire formats into the live receivers. Nothing
is lost, clock offsets are found, the loop's inputs equal what training computes, and the recorded session reads back
equal to what was sent."""
import numpy as np
import pytest

from vla_lib.config import RunConfig, SyntheticConfig
from vla_lib.data.recorder_formats import read_session
from vla_lib.data.timeline import pose_history
from vla_lib.data.synthetic import _make_spec, write_new_dataset_episode
from vla_lib.data.timeline import resample_sensor_window
from vla_lib.runtime.live_io import LiveRobotIO
from vla_lib.rig.record import SessionRecorder
from vla_lib.rig.senders import SimulatedSenders
from tests.rig.conftest import wait_for


def test_loopback_replay_record_and_read_back(rig_session, live_cfg, tmp_path):
    s = rig_session
    data = RunConfig().data
    recorder = SessionRecorder(tmp_path)
    io = LiveRobotIO(live_cfg, data, recorder).start()
    rig = SimulatedSenders(s, live_cfg.robot_endpoint, live_cfg.camera_endpoint, live_cfg.sensor_endpoint).start()
    try:
        assert wait_for(lambda: not io.missing(), timeout=5.0), io.missing()
        t_mid = None
        # mid-run, the loop's inputs are what training computes from the same samples
        assert wait_for(lambda: io.robot.n > 150, timeout=5.0)
        t_mid = io.now()
        # 50 ms back: every robot sample stamped up to then has arrived, also on a busy machine (at t_mid itself the
        # newest may still be in flight); 330 ms back: later samples are in the buffer, only those <= t count
        for t in (t_mid - 0.05, t_mid - 0.33):
            rt = s.robot_times[s.robot_times <= t]
            np.testing.assert_allclose(io.pose_history(4, t), pose_history(rt, s.pose[:len(rt)], [t], 4, 0.1)[0],
                                       atol=1e-3)
        t_w = t_mid - 0.05  # the sensor sends in 5 ms batches: by now every sample up to t_w has arrived
        window = io.sensor_window(t_w)
        st = s.sensor.times + io.offset("sensor")
        expected, valid, _ = resample_sensor_window(st, s.sensor.forces, s.sensor.alines, t_w,
                                                    data.sensor_window_s, data.sensor_window_size,
                                                    data.sensor_max_gap_s)
        assert valid.mean() > 0.5
        np.testing.assert_array_equal(window.valid, valid)
        np.testing.assert_allclose(window.values[valid], expected[valid], rtol=1e-6)
        images, ident, captured = io.views()
        assert all(im is not None for im in images) and min(ident) > 0 and captured <= t_mid
        assert wait_for(rig.done, timeout=10.0)
        empty = io.sensor_window(st[-1] + 0.5)  # no sample in the window: every point masked, not a reading of 0
        assert not empty.valid.any() and not empty.values.any()
    finally:
        sent = rig.stop()
        wait_for(lambda: io.sensor.stats.accepted >= sent["sent"]["sensor"], timeout=1.0)
        io.stop()
    stats = io.stream_stats()
    # nothing lost, nothing dropped
    assert sent["subscribed"]
    assert sent["sent"]["robot"] == len(s.robot_times) == stats["robot"]["accepted"]
    assert sent["sent"]["camera"] == sum(len(f.times) for f in s.frames.values()) == stats["camera"]["accepted"]
    assert sent["sent"]["sensor"] == len(s.sensor.times) == stats["sensor"]["accepted"]
    assert all(stats[k]["dropped"] == 0 for k in ("robot", "camera", "sensor"))
    # the recorded clock offsets of the session, estimated live from send/receive stamps
    assert abs(io.offset("camera") - s.camera_offset()) < 2e-3
    assert abs(io.offset("sensor") - s.sensor_offset()) < 2e-3
    # record -> read: equal frames, samples and stamps
    path = recorder.close({"camera_s": io.offset("camera"), "sensor_s": io.offset("sensor")})
    back = read_session(path)
    np.testing.assert_array_equal(back.robot_times, s.robot_times)
    np.testing.assert_array_equal(back.pose, s.pose.astype(np.float32).astype(np.float64))  # the wire carries f32
    np.testing.assert_array_equal(back.joints, s.joints.astype(np.float32).astype(np.float64))
    for key in ("times", "forces", "alines"):
        np.testing.assert_array_equal(np.asarray(getattr(back.sensor, key)), np.asarray(getattr(s.sensor, key)))
    assert set(back.frames) == set(s.frames)
    for view, fl in s.frames.items():
        np.testing.assert_array_equal(back.frames[view].times, fl.times)
        assert [p.read_bytes() for p in back.frames[view].paths] == [p.read_bytes() for p in fl.paths]
        assert [p.name for p in back.frames[view].paths] == [p.name for p in fl.paths]
    assert abs(back.camera_offset() - s.camera_offset()) < 2e-3


@pytest.mark.parametrize("layout", ["captures", "new_dataset"])
def test_senders_replay_the_other_layouts(rig_root, live_cfg, tmp_path, layout):
    """Legacy Captures sessions (no sensor) and New_dataset episodes (windows rebuilt) replay over the same wire."""
    if layout == "captures":
        s = read_session(sorted(rig_root.glob("OCT_insertion/Captures*"))[0])
    else:
        rng = np.random.default_rng(2)
        syn = SyntheticConfig(duration_s=2.0, image_width=160, image_height=90)
        s = read_session(write_new_dataset_episode(tmp_path / "Eye", _make_spec(rng, 1761600000.0, 2.0, 0), syn, rng,
                                                   window=200))
    io = LiveRobotIO(live_cfg, RunConfig().data).start()
    rig = SimulatedSenders(s, live_cfg.robot_endpoint, live_cfg.camera_endpoint, live_cfg.sensor_endpoint).start()
    try:
        assert wait_for(rig.done, timeout=10.0)
    finally:
        sent = rig.stop()
        wait_for(lambda: io.sensor.stats.accepted >= sent["sent"]["sensor"], timeout=1.0)
        io.stop()
    stats = io.stream_stats()
    assert sent["sent"]["robot"] == len(s.robot_times) == stats["robot"]["accepted"]
    assert sent["sent"]["camera"] == sum(len(f.times) for f in s.frames.values()) == stats["camera"]["accepted"] > 0
    assert sent["sent"]["sensor"] == (len(s.sensor.times) if s.has_sensor else 0) == stats["sensor"]["accepted"]
    assert all(stats[k]["dropped"] == 0 for k in ("robot", "camera", "sensor"))
    # every view of the session arrived under its own key (Captures' "oak_<ts>" and New_dataset's bare stamps
    # get a camera name that maps back to the view)
    assert {v for v, f in s.frames.items() if len(f.times)} == set(stats["camera"]["per_view"])
