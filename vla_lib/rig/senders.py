"""Simulated rig senders: a recorded session (any layout `read_session` accepts) replayed over the wire formats at
its real rates, for tests and demos.

Timing: one replay clock for all streams. Robot sample i goes out when the replay clock reaches its origin stamp;
a camera frame or sensor sample when it reaches the frame's stamp put on the robot clock (stamp + the session's
clock offset, `clock_offsets.json`; 0 where absent). Each sender stamps `send_ts` with *its own* clock: the replay
clock minus that stream's offset, so the receivers see the session's original inter-clock offsets and have to
estimate them. Payload stamps are the recorded ones (cameras: the file-name stamps; robot: origin stamps; sensor:
the NPZ stamps). With `loop`, the session plays again with every stamp shifted by its span (+ one robot period).

The robot publisher is a ZMQ XPUB: it waits (bounded) for a subscription before the clock starts, so no sample is
lost to the PUB/SUB slow-joiner race. The camera sender PUSHes (connects); the sensor sends UDP datagrams of the
packets due every `sensor_batch_s` (at most 15 per datagram). `sensor_drop_fraction` drops packets on purpose
(counted as `dropped_on_purpose`).
"""
from __future__ import annotations

import re
import socket
import threading
import time

import numpy as np

from vla_lib.data.cameras import default_camera_views
from vla_lib.rig import wire
from vla_lib.rig.receivers import parse_udp_endpoint

_CAMERA_NAME = re.compile(r"^(.*)_(\d+(?:\.\d+)?)\.jpe?g$", re.IGNORECASE)


def camera_frames(session, camera_views: dict[str, str], views: list[str] | None = None):
    """All frames of the session in stamp order: (robot-clock time, camera name, stamp, path)."""
    out = []
    for view, fl in session.frames.items():
        if views and view not in views:
            continue
        for t, p in zip(fl.times, fl.paths):
            m = _CAMERA_NAME.match(p.name)
            name = m.group(1) if m else wire.camera_name_for(view, camera_views)
            if wire.camera_view(name, camera_views) != view:  # e.g. Captures' "oak" or a renamed camera
                name = wire.camera_name_for(view, camera_views)
            out.append((float(t) + session.camera_offset(), name, float(t), p))
    out.sort(key=lambda x: x[0])
    return out


class SimulatedSenders:
    def __init__(self, session, robot_endpoint: str, camera_endpoint: str, sensor_endpoint: str,
                 camera_views: dict[str, str] | None = None, views: list[str] | None = None, loop: bool = False,
                 sensor_batch_s: float = 0.005, sensor_drop_fraction: float = 0.0, seed: int = 0,
                 subscribe_timeout_s: float = 5.0):
        self.s = session
        self.robot_endpoint, self.camera_endpoint, self.sensor_endpoint = robot_endpoint, camera_endpoint, sensor_endpoint
        self.camera_views = camera_views or default_camera_views()
        self.frames = camera_frames(session, self.camera_views, views)
        self.loop, self.batch_s, self.drop_fraction = loop, sensor_batch_s, sensor_drop_fraction
        self.rng = np.random.default_rng(seed)
        self.subscribe_timeout_s = subscribe_timeout_s
        starts = [session.robot_times[0]] + ([self.frames[0][0]] if self.frames else [])
        ends = [session.robot_times[-1]] + ([self.frames[-1][0]] if self.frames else [])
        if session.has_sensor:
            starts.append(session.sensor.times[0] + session.sensor_offset())
            ends.append(session.sensor.times[-1] + session.sensor_offset())
        self.t_first = min(starts)
        self.span = round(max(ends) - self.t_first + 0.01, 3)  # loop shift, whole milliseconds
        self.sent = {"robot": 0, "camera": 0, "sensor": 0, "sensor_datagrams": 0}
        self.dropped_on_purpose = {"sensor": 0}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []
        self.shift = None  # wall clock - replay (robot) clock
        self.subscribed = False

    # -- clock -------------------------------------------------------------------------------------------------
    def _wait_until(self, t_robot: float) -> bool:
        """Sleep until the replay clock reaches t_robot; False when stopped."""
        while not self._stop.is_set():
            dt = t_robot + self.shift - time.time()
            if dt <= 0:
                return True
            time.sleep(min(dt, 0.05))
        return False

    def _replay_now(self) -> float:
        return time.time() - self.shift

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def start(self, lead_s: float = 0.2) -> "SimulatedSenders":
        import zmq

        ctx = zmq.Context.instance()
        self._pub = ctx.socket(zmq.XPUB)
        self._pub.setsockopt(zmq.SNDHWM, 100_000)
        self._pub.bind(self.robot_endpoint)
        if self._pub.poll(int(self.subscribe_timeout_s * 1e3)):  # a subscription message arrives on an XPUB
            self._pub.recv()
            self.subscribed = True
        self._push = ctx.socket(zmq.PUSH)
        self._push.setsockopt(zmq.SNDHWM, 10_000)
        self._push.connect(self.camera_endpoint)
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp_addr = parse_udp_endpoint(self.sensor_endpoint)
        self.shift = time.time() + lead_s - self.t_first
        for fn in (self._robot, self._camera, self._sensor):
            th = threading.Thread(target=self._guard, args=(fn,), name=f"sim-{fn.__name__}", daemon=True)
            th.start()
            self._threads.append(th)
        return self

    def _guard(self, fn):
        try:
            k = 0
            while not self._stop.is_set():
                fn(k * self.span)
                if not self.loop:
                    break
                k += 1
        except BaseException as e:
            self.errors.append(e)

    def done(self) -> bool:
        return all(not t.is_alive() for t in self._threads)

    def stop(self, timeout: float = 3.0) -> dict:
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        self._pub.close(linger=0)
        self._push.close(linger=500)
        self._udp.close()
        if self.errors:
            raise self.errors[0]
        return self.stats()

    def stats(self) -> dict:
        return {"sent": dict(self.sent), "dropped_on_purpose": dict(self.dropped_on_purpose), "loop": self.loop,
                "subscribed": self.subscribed, "session": str(self.s.path)}

    # -- streams -------------------------------------------------------------------------------------------------
    def _robot(self, shift: float):
        s = self.s
        joints = s.joints
        force = 0.0
        for i in range(len(s.robot_times)):
            t = round(float(s.robot_times[i]) + shift, 3) if shift else float(s.robot_times[i])
            if not self._wait_until(t):
                return
            self._pub.send_multipart(wire.robot_message(
                wire.pack_robot(t, self._replay_now(), force, joints[i], s.pose[i])))
            self.sent["robot"] += 1

    def _camera(self, shift: float):
        off = self.s.camera_offset()
        for t_robot, name, stamp, path in self.frames:
            if not self._wait_until(t_robot + shift):
                return
            jpeg = path.read_bytes()
            stamp = round(stamp + shift, 3) if shift else stamp
            self._push.send_multipart(wire.pack_camera(name, stamp, self._replay_now() - off, jpeg))
            self.sent["camera"] += 1

    def _sensor(self, shift: float):
        s = self.s
        if not s.has_sensor:
            return
        off = s.sensor_offset()
        times = np.asarray(s.sensor.times, np.float64) + shift
        n, i = len(times), 0
        while i < n and not self._stop.is_set():
            now = self._replay_now()
            j = int(np.searchsorted(times, now - off, side="right"))  # everything due by now
            while i < j:
                k = min(j, i + wire.SENSOR_MAX_PER_DATAGRAM)
                idx = np.arange(i, k)
                if self.drop_fraction:
                    keep = self.rng.random(len(idx)) >= self.drop_fraction
                    self.dropped_on_purpose["sensor"] += int((~keep).sum())
                    idx = idx[keep]
                if len(idx):
                    send = self._replay_now() - off
                    self._udp.sendto(wire.pack_sensor(times[idx], np.full(len(idx), send), s.sensor.forces[idx],
                                                      s.sensor.alines[idx]), self._udp_addr)
                    self.sent["sensor"] += len(idx)
                    self.sent["sensor_datagrams"] += 1
                i = k
            if i < n:
                nxt = times[i] + off + self.shift
                time.sleep(min(0.05, max(self.batch_s, nxt - time.time())))  # batch what falls due meanwhile


# ---------------------------------------------------------------------------------------------------------------
# Senders in their own process (as on the rig, where they run on other machines): no GIL shared with the receivers
# ---------------------------------------------------------------------------------------------------------------
def _rig_process(session_path: str, kwargs: dict, stop, results) -> None:
    from vla_lib.data.recorder_formats import read_session

    rig = SimulatedSenders(read_session(session_path, check_images=False), **kwargs).start()
    while not stop.wait(0.1) and not rig.done():
        pass
    results.put(rig.stop())


class RigProcess:
    """`SimulatedSenders` in a spawned process; `stop()` returns its counts."""

    def __init__(self, session_path, **kwargs):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._stop, self._results = ctx.Event(), ctx.Queue()
        self._proc = ctx.Process(target=_rig_process, args=(str(session_path), kwargs, self._stop, self._results),
                                 daemon=True)

    def start(self) -> "RigProcess":
        self._proc.start()
        return self

    def stop(self, timeout: float = 10.0) -> dict | None:
        self._stop.set()
        try:
            stats = self._results.get(timeout=timeout)
        except Exception:
            stats = None
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.kill()
        return stats
