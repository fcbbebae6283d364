"""Every receiver counts and drops malformed input, keeps only good samples, and goes on receiving."""
import json
import socket

import numpy as np
import zmq

from vla_lib.data.cameras import default_camera_views
from vla_lib.rig import wire
from vla_lib.rig.receivers import CameraReceiver, ClockOffset, RobotReceiver, SensorReceiver, parse_udp_endpoint
from tests.rig.conftest import wait_for


def test_clock_offset_is_a_running_minimum_over_a_sliding_window():
    c = ClockOffset(window_s=1.0)
    assert c.value is None
    for recv, delay in [(10.0, 0.004), (10.2, 0.001), (10.4, 0.009), (10.6, 0.002)]:
        c.update(recv, recv - 5.0 - delay)  # sender clock 5 s behind, plus a transport delay
    assert abs(c.value - 5.001) < 1e-9  # the least-delayed message
    c.update(11.5, 11.5 - 5.0 - 0.003)  # 10.2 left the window: the minimum follows
    assert abs(c.value - 5.002) < 1e-9


def test_robot_receiver_drops_malformed(live_cfg):
    pub = zmq.Context.instance().socket(zmq.XPUB)
    pub.bind(live_cfg.robot_endpoint)
    r = RobotReceiver(live_cfg.robot_endpoint).start_and_wait()
    try:
        assert pub.poll(5000)
        pub.recv()  # the subscription
        good = lambda t: wire.robot_message(wire.pack_robot(t, t, 0.0, [0] * 6, [t] * 6))  # noqa: E731
        msgs = [good(1.0), [b"robot_state", b"\0" * 60],
                wire.robot_message(wire.pack_robot(1.5, 1.5, np.nan, [0] * 6, [0] * 6)),
                good(0.5), good(1.0), [b"robot_state", b"a", b"b"], good(2.0)]
        for m in msgs:
            pub.send_multipart(m)
        assert wait_for(lambda: r.stats.messages == len(msgs))
        assert dict(r.stats.dropped) == {"wrong_size": 1, "non_finite": 1, "non_monotonic": 2, "bad_framing": 1}
        times, pose = r.latest(10.0)
        assert times.tolist() == [1.0, 2.0] and pose[:, 0].tolist() == [1.0, 2.0]
    finally:
        r.stop()
        pub.close(linger=0)


def test_camera_receiver_drops_malformed(live_cfg):
    r = CameraReceiver(live_cfg.camera_endpoint, default_camera_views()).start_and_wait()
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.connect(live_cfg.camera_endpoint)
    jpeg = b"\xff\xd8" + b"x" * 10 + b"\xff\xd9"
    try:
        msgs = [wire.pack_camera("zed_41182735_left", 1.0, 1.0, jpeg),
                wire.pack_camera("zed_99999999_left", 1.1, 1.1, jpeg),  # unknown camera
                [b"{not json", jpeg],
                wire.pack_camera("zed_41182735_left", 1.2, 1.2, b"\x89PNG"),
                wire.pack_camera("zed_41182735_left", 0.9, 1.2, jpeg),  # older than the last frame
                [json.dumps({"camera": "oak_CAM_A", "timestamp": float("nan"), "send_time": 1.0}).encode(), jpeg],
                [jpeg],
                wire.pack_camera("zed_41182735_left", 2.0, 2.0, jpeg), wire.pack_camera("oak_CAM_A", 2.0, 2.0, jpeg)]
        for m in msgs:
            push.send_multipart(m)
        assert wait_for(lambda: r.stats.messages == len(msgs))
        assert dict(r.stats.dropped) == {"unknown_camera": 1, "bad_meta": 1, "not_jpeg": 1, "non_monotonic": 1,
                                         "non_finite": 1, "bad_framing": 1}
        assert r.latest["View1_left"][1] == 2.0 and r.latest["View5"][2] == "oak_CAM_A" and len(r.latest) == 2
    finally:
        push.close(linger=0)
        r.stop()


def test_sensor_receiver_drops_malformed(live_cfg):
    r = SensorReceiver(live_cfg.sensor_endpoint, capacity=64).start_and_wait()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    addr = parse_udp_endpoint(live_cfg.sensor_endpoint)
    a = np.ones((3, 1025), np.float32)
    try:
        good = wire.pack_sensor([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [-3, -3, -3], a)
        nan = a[:2].copy()
        nan[0, 100] = np.nan
        datagrams = [good, good[:-10], wire.pack_sensor([4.0, 5.0], [4.0, 5.0], [-3, -3], nan),
                     wire.pack_sensor([2.5], [2.5], [-3], a[:1]), b"\x01\x00",
                     wire.pack_sensor([6.0, 5.5, 7.0], [6, 6, 7], [-3, -3, -3], a)]
        for d in datagrams:
            udp.sendto(d, addr)
        assert wait_for(lambda: r.stats.messages == len(datagrams))
        assert dict(r.stats.dropped) == {"wrong_size": 2, "non_finite": 1, "non_monotonic": 2}
        times, forces, alines = r.latest(64)
        assert times.tolist() == [1.0, 2.0, 3.0, 5.0, 6.0, 7.0]
        assert np.isfinite(alines).all() and np.isfinite(forces).all()  # nothing malformed reaches the buffer
    finally:
        udp.close()
        r.stop()


def test_a_busy_endpoint_is_reported(live_cfg):
    first = SensorReceiver(live_cfg.sensor_endpoint).start_and_wait()
    try:
        second = SensorReceiver(live_cfg.sensor_endpoint)
        try:
            second.start_and_wait(timeout=2)
            raise AssertionError("binding a busy port should fail")
        except RuntimeError as e:
            assert "sensor receiver could not open" in str(e)
    finally:
        first.stop()
