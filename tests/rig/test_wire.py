"""Each wire format round-trips exactly, and every kind of malformed input is refused with a reason."""
import json
import math

import numpy as np
import pytest

from vla_lib.data.cameras import default_camera_views

from vla_lib.rig import wire


def test_robot_payload_is_68_bytes_and_round_trips_in_f32():
    pose = [250.123456, -40.5, 130.25, 90.0, 0.5, 179.9]
    joints = [1, 2, 3, 4, 5, 6]
    payload = wire.pack_robot(1761580000.123, 1761580000.1242, -3.0, joints, pose)
    assert len(payload) == 68
    assert np.frombuffer(payload[:8], "<f8")[0] == 1761580000.123  # little-endian f64 first
    np.testing.assert_array_equal(np.frombuffer(payload[44:68], "<f4"), np.float32(pose))  # pose last
    s = wire.unpack_robot(wire.split_robot_message(wire.robot_message(payload)))
    assert s.origin_ts == 1761580000.123 and s.send_ts == 1761580000.1242  # f64 stamps are exact
    np.testing.assert_array_equal(s.pose, np.float32(pose).astype(np.float64))
    # the single-frame idiom topic + payload is accepted too
    assert wire.unpack_robot(wire.split_robot_message([wire.ROBOT_TOPIC + payload])) == s


@pytest.mark.parametrize("bad, reason", [
    (b"\0" * 67, "wrong_size"), (b"\0" * 69, "wrong_size"),
    (wire.pack_robot(1.0, 1.0, float("nan"), [0] * 6, [0] * 6), "non_finite"),
    (wire.pack_robot(1.0, 1.0, 0.0, [0] * 6, [0, 0, float("inf"), 0, 0, 0]), "non_finite"),
])
def test_malformed_robot_payloads_are_refused(bad, reason):
    with pytest.raises(wire.WireError) as e:
        wire.unpack_robot(bad)
    assert e.value.reason == reason


def test_robot_framing_errors():
    with pytest.raises(wire.WireError):
        wire.split_robot_message([b"other_topic", b"\0" * 68])
    with pytest.raises(wire.WireError):
        wire.split_robot_message([b"robot_state", b"x", b"y"])


JPEG = b"\xff\xd8" + b"\x10" * 100 + b"\xff\xd9"


def test_camera_round_trip():
    msg = wire.pack_camera("zed_41182735_left", 1761580000.5, 1761580000.52, JPEG)
    assert json.loads(msg[0]) == {"camera": "zed_41182735_left", "timestamp": 1761580000.5, "send_time": 1761580000.52}
    f = wire.unpack_camera(msg)
    assert (f.camera, f.timestamp, f.send_time, f.jpeg) == ("zed_41182735_left", 1761580000.5, 1761580000.52, JPEG)


@pytest.mark.parametrize("frames, reason", [
    ([b"{}"], "bad_framing"),
    ([b"not json", JPEG], "bad_meta"),
    ([json.dumps({"camera": "x", "timestamp": 1.0}).encode(), JPEG], "bad_meta"),
    ([json.dumps({"camera": "x", "timestamp": "NaN", "send_time": 1.0}).encode(), JPEG], "non_finite"),
    ([json.dumps({"camera": "x", "timestamp": 1.0, "send_time": 1.0}).encode(), JPEG[:-2]], "not_jpeg"),
    ([json.dumps({"camera": "x", "timestamp": 1.0, "send_time": 1.0}).encode(), b"GIF89a"], "not_jpeg"),
])
def test_malformed_camera_messages_are_refused(frames, reason):
    with pytest.raises(wire.WireError) as e:
        wire.unpack_camera(frames)
    assert e.value.reason == reason


def _packets(n, t0=100.0):
    rng = np.random.default_rng(0)
    ts = t0 + np.arange(n) / 650.0
    return ts, ts + 1e-4, rng.normal(-3, 0.1, n).astype(np.float32), rng.normal(0, 1, (n, 1025)).astype(np.float32)


def test_sensor_datagram_layout_and_round_trip():
    ts, send, force, alines = _packets(3)
    d = wire.pack_sensor(ts, send, force, alines)
    assert len(d) == 4 + 3 * 4120 and int.from_bytes(d[:4], "little") == 3
    # packet 0 by hand: f64 ts, f64 send_ts, f32 force, then the A-line
    assert np.frombuffer(d[4:12], "<f8")[0] == ts[0] and np.frombuffer(d[20:24], "<f4")[0] == force[0]
    np.testing.assert_array_equal(np.frombuffer(d[24:4124], "<f4"), alines[0])
    rec, bad = wire.unpack_sensor(d)
    assert bad == 0
    np.testing.assert_array_equal(rec["ts"], ts)
    np.testing.assert_array_equal(rec["send_ts"], send)
    np.testing.assert_array_equal(rec["force"], force)
    np.testing.assert_array_equal(rec["aline"], alines)
    assert wire.SENSOR_MAX_PER_DATAGRAM == 15 and len(wire.pack_sensor(*_packets(15))) <= 65507


def test_malformed_sensor_datagrams():
    ts, send, force, alines = _packets(3)
    d = wire.pack_sensor(ts, send, force, alines)
    for bad in (d[:-1], d + b"\0", b"\0\0", wire.SENSOR_COUNT.pack(0), wire.SENSOR_COUNT.pack(4) + d[4:]):
        with pytest.raises(wire.WireError) as e:
            wire.unpack_sensor(bad)
        assert e.value.reason == "wrong_size"
    alines[1, 7] = np.nan
    force[2] = np.inf
    rec, bad = wire.unpack_sensor(wire.pack_sensor(ts, send, force, alines))
    assert bad == 2 and rec["ts"].tolist() == [ts[0]]


def test_action_round_trip():
    msg = wire.pack_action(5.0, 6.0, [1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12])
    t, s, delta, target = wire.unpack_action(msg)
    assert (t, s) == (5.0, 6.0) and delta.tolist() == [1, 2, 3, 4, 5, 6] and target[-1] == 12


def test_camera_names_map_to_views():
    m = default_camera_views()
    assert wire.camera_view("zed_49045152_right", m) == "View4_right"
    assert wire.camera_view("oak_CAM_A", m) == "View5" and wire.camera_view("oak", m) == "View5"
    assert wire.camera_view("zed_12345_left", m) is None
    for view in ("View1_left", "View3_right", "View5"):
        assert wire.camera_view(wire.camera_name_for(view, m), m) == view
    assert not math.isnan(wire.SENSOR_PACKET_SIZE)
