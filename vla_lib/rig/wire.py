"""The rig's wire formats, packed and unpacked in one place (byte for byte as the rig sends them).

- Robot state, ZMQ PUB/SUB, topic `robot_state`, payload `<ddf12f` (68 B): origin_ts f64, send_ts f64, force f32,
  6 joints f32 (deg), 6 pose f32 (x, y, z mm; a, b, r deg). Sent as a two-frame message [topic, payload]; a single
  frame `topic + payload` (the other common PUB/SUB idiom) is accepted too.
- Camera frames, ZMQ PUSH/PULL, multipart [JSON {camera, timestamp, send_time}, JPEG bytes].
- OCT/force sensor, UDP: one datagram = u32 packet count N + N x 4120-B packets [f64 ts, f64 send_ts, f32 force,
  1025 x f32 A-line], all little-endian.
- Actions (ours: the rig's formats have no action message), ZMQ PUB, topic `action`, payload `<dd6f6f` (64 B):
  observation time t (robot clock) f64, send time f64 (receiver clock), the 6 pose deltas to execute over the next
  step (mm, deg) and the commanded absolute target pose (mm, deg) f32. A hold is an action with zero deltas
  (target = measured pose).
- Stops (ours), on the same PUB socket, topic `stop`: [b"stop", `<dd` (time of the sample that tripped it, robot
  clock; send time), the reason as UTF-8]. The arm stops at once and moves again only after an operator's release,
  which is announced as [b"release", `<d` send time]. Actions carry deltas: the rig integrates them (the target pose
  is the measured pose + delta, for logging and checks; a hold's target is the measured pose).

Every `unpack_*` raises `WireError` (with a short reason used as the drop counter's key) on anything malformed:
wrong size, non-finite numbers, bad JSON, a payload that is not a JPEG. Parsing uses `struct` / numpy `frombuffer`
with explicit little-endian types.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

import numpy as np

ALINE_POINTS = 1025
ROBOT_TOPIC = b"robot_state"
ROBOT_STRUCT = struct.Struct("<ddf12f")
ROBOT_SIZE = ROBOT_STRUCT.size  # 68
SENSOR_COUNT = struct.Struct("<I")
SENSOR_DTYPE = np.dtype([("ts", "<f8"), ("send_ts", "<f8"), ("force", "<f4"), ("aline", "<f4", (ALINE_POINTS,))])
SENSOR_PACKET_SIZE = SENSOR_DTYPE.itemsize  # 4120
UDP_MAX_PAYLOAD = 65507
SENSOR_MAX_PER_DATAGRAM = (UDP_MAX_PAYLOAD - SENSOR_COUNT.size) // SENSOR_PACKET_SIZE  # 15
ACTION_TOPIC = b"action"
STOP_TOPIC = b"stop"
STOP_STRUCT = struct.Struct("<dd")
RELEASE_TOPIC = b"release"
ACTION_STRUCT = struct.Struct("<dd6f6f")
ACTION_SIZE = ACTION_STRUCT.size  # 64

assert ROBOT_SIZE == 68 and SENSOR_PACKET_SIZE == 4120 and ACTION_SIZE == 64


class WireError(ValueError):
    """A malformed message; `reason` is a short key (counted per stream by the receivers)."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


# ---------------------------------------------------------------------------------------------------------------
# Robot state
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RobotSample:
    origin_ts: float
    send_ts: float
    force: float
    joints: tuple  # 6 floats, deg
    pose: tuple  # 6 floats: x, y, z mm; a, b, r deg


def pack_robot(origin_ts: float, send_ts: float, force: float, joints, pose) -> bytes:
    return ROBOT_STRUCT.pack(float(origin_ts), float(send_ts), float(force), *map(float, joints), *map(float, pose))


def robot_message(payload: bytes) -> list[bytes]:
    return [ROBOT_TOPIC, payload]


def unpack_robot(payload: bytes) -> RobotSample:
    if len(payload) != ROBOT_SIZE:
        raise WireError("wrong_size", f"robot payload of {len(payload)} B, expected {ROBOT_SIZE}")
    values = ROBOT_STRUCT.unpack(payload)
    if not all(math.isfinite(v) for v in values):
        raise WireError("non_finite", "NaN or inf in robot payload")
    return RobotSample(values[0], values[1], values[2], values[3:9], values[9:15])


def split_robot_message(frames: list[bytes]) -> bytes:
    """The payload of a robot message, two-frame [topic, payload] or one frame topic + payload."""
    if len(frames) == 2 and frames[0] == ROBOT_TOPIC:
        return frames[1]
    if len(frames) == 1 and frames[0].startswith(ROBOT_TOPIC):
        return frames[0][len(ROBOT_TOPIC):]
    raise WireError("bad_framing", f"{len(frames)} frame(s), first {bytes(frames[0][:16])!r}" if frames else "empty")


# ---------------------------------------------------------------------------------------------------------------
# Cameras
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CameraFrame:
    camera: str
    timestamp: float  # capture time, sender clock
    send_time: float  # sender clock
    jpeg: bytes


def pack_camera(camera: str, timestamp: float, send_time: float, jpeg: bytes) -> list[bytes]:
    meta = {"camera": camera, "timestamp": float(timestamp), "send_time": float(send_time)}
    return [json.dumps(meta).encode(), bytes(jpeg)]


def unpack_camera(frames: list[bytes]) -> CameraFrame:
    if len(frames) != 2:
        raise WireError("bad_framing", f"{len(frames)} frame(s), expected [JSON, JPEG]")
    try:
        meta = json.loads(bytes(frames[0]).decode())
        camera, ts, send = meta["camera"], float(meta["timestamp"]), float(meta["send_time"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise WireError("bad_meta", str(e)) from None
    if not isinstance(camera, str) or not camera:
        raise WireError("bad_meta", f"camera {camera!r}")
    if not (math.isfinite(ts) and math.isfinite(send)):
        raise WireError("non_finite", "NaN or inf stamp in camera meta")
    jpeg = bytes(frames[1])
    if len(jpeg) < 4 or jpeg[:2] != b"\xff\xd8" or jpeg[-2:] != b"\xff\xd9":
        raise WireError("not_jpeg", f"{len(jpeg)} B without JPEG start/end markers")
    return CameraFrame(camera, ts, send, jpeg)


# ---------------------------------------------------------------------------------------------------------------
# OCT / force sensor (UDP)
# ---------------------------------------------------------------------------------------------------------------
def pack_sensor(ts, send_ts, force, alines) -> bytes:
    """One datagram of N packets (N <= SENSOR_MAX_PER_DATAGRAM)."""
    ts = np.atleast_1d(np.asarray(ts, np.float64))
    n = len(ts)
    if n > SENSOR_MAX_PER_DATAGRAM:
        raise ValueError(f"{n} packets do not fit one UDP datagram (max {SENSOR_MAX_PER_DATAGRAM})")
    rec = np.empty(n, SENSOR_DTYPE)
    rec["ts"], rec["send_ts"], rec["force"] = ts, send_ts, force
    rec["aline"] = np.asarray(alines, np.float32).reshape(n, ALINE_POINTS)
    return SENSOR_COUNT.pack(n) + rec.tobytes()


def sensor_packets(datagram: bytes) -> np.ndarray:
    """Every packet of a datagram as sent (a SENSOR_DTYPE record array, NaN and all). A datagram whose length does
    not match its count is dropped whole (WireError): its packet boundaries cannot be trusted."""
    if len(datagram) < SENSOR_COUNT.size:
        raise WireError("wrong_size", f"datagram of {len(datagram)} B")
    (n,) = SENSOR_COUNT.unpack_from(datagram)
    if n == 0 or len(datagram) != SENSOR_COUNT.size + n * SENSOR_PACKET_SIZE:
        raise WireError("wrong_size", f"datagram of {len(datagram)} B announces {n} packet(s) of {SENSOR_PACKET_SIZE} B")
    return np.frombuffer(datagram, SENSOR_DTYPE, count=n, offset=SENSOR_COUNT.size)


def finite_packets(rec: np.ndarray) -> tuple[np.ndarray, int]:
    """(the packets without a non-finite number, how many were dropped): a packet with NaN/inf is dropped alone."""
    finite = np.isfinite(rec["ts"]) & np.isfinite(rec["send_ts"]) & np.isfinite(rec["force"])
    finite &= np.isfinite(rec["aline"]).all(1)
    if finite.all():
        return rec, 0
    return rec[finite], int((~finite).sum())


def unpack_sensor(datagram: bytes) -> tuple[np.ndarray, int]:
    """(the well-formed packets as a SENSOR_DTYPE record array, number of packets dropped for NaN/inf)."""
    return finite_packets(sensor_packets(datagram))


# ---------------------------------------------------------------------------------------------------------------
# Actions (published only with --send-actions)
# ---------------------------------------------------------------------------------------------------------------
def pack_action(t: float, send_ts: float, delta, target_pose) -> list[bytes]:
    return [ACTION_TOPIC, ACTION_STRUCT.pack(float(t), float(send_ts), *map(float, delta), *map(float, target_pose))]


def unpack_action(frames: list[bytes]) -> tuple[float, float, np.ndarray, np.ndarray]:
    if len(frames) != 2 or frames[0] != ACTION_TOPIC or len(frames[1]) != ACTION_SIZE:
        raise WireError("bad_framing", "expected [b'action', 64-B payload]")
    v = ACTION_STRUCT.unpack(frames[1])
    return v[0], v[1], np.array(v[2:8]), np.array(v[8:14])


def pack_stop(t_sample: float, send_ts: float, reason: str) -> list[bytes]:
    return [STOP_TOPIC, STOP_STRUCT.pack(float(t_sample), float(send_ts)), reason.encode()]


def unpack_stop(frames: list[bytes]) -> tuple[float, float, str]:
    if len(frames) != 3 or frames[0] != STOP_TOPIC or len(frames[1]) != STOP_STRUCT.size:
        raise WireError("bad_framing", "expected [b'stop', 16-B payload, reason]")
    t_sample, send_ts = STOP_STRUCT.unpack(frames[1])
    return t_sample, send_ts, frames[2].decode(errors="replace")


def pack_release(send_ts: float) -> list[bytes]:
    return [RELEASE_TOPIC, struct.pack("<d", float(send_ts))]


# ---------------------------------------------------------------------------------------------------------------
# Camera names <-> view keys
# ---------------------------------------------------------------------------------------------------------------
# default_camera_views (camera name -> view key) lives with the cameras' other facts in vla_lib.data.cameras


def camera_view(camera: str, mapping: dict[str, str]) -> str | None:
    if camera in mapping:
        return mapping[camera]
    for key, view in mapping.items():
        if key.endswith("*") and camera.startswith(key[:-1]):
            return view
    return None


def camera_name_for(view: str, mapping: dict[str, str]) -> str:
    """A camera name that maps to `view` (for senders replaying layouts whose file names carry none)."""
    for key, v in mapping.items():
        if v == view:
            return key[:-1] + "_CAM_A" if key.endswith("*") else key
    raise KeyError(f"no camera maps to view {view!r}")
