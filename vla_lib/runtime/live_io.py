"""`LiveRobotIO`: the control loop's `RobotIO` on the rig's live streams (`vla_lib/rig/receivers.py`).

- `now()`: the robot clock, i.e. the local clock minus the robot stream's estimated offset.
- `views()`: the latest frame per configured view (decoded once per new frame), identity = the frames' sequence
  numbers, capture time = the oldest of them on the robot clock.
- `sensor_window()`: the ring buffer's samples in (now - window, now] on the robot clock (sensor stamps + the
  sensor-minus-robot offset), resampled onto the fixed grid by `timeline.resample_sensor_window`, the same code as
  training, as a `SensorWindow` (values, valid: points without a sample are 0 and invalid). None until the first
  sensor packet.
- `pose_history(steps)`: `vla_lib.data.timeline.pose_history` (the training code) on the robot samples stamped at or
  before now only.
- `robot_pose()`, `stream_ages()`: the newest robot sample at or before now; seconds since each stream's newest
  sample (robot, sensor, camera = the oldest of the views' newest frames, and per view).
- `actuator`: `runtime.actuators.ActionPublisher` (ZMQ PUB with `live.send_actions`, else the dry-run log).
- `attach_guard(guard)`: the sensor receiver hands every datagram to the guard, in its own thread, and the guard's
  watchdog (`runtime.guard.SensorWatchdog`) runs in a thread of its own until `stop()`.
"""
from __future__ import annotations

import io as _io
import time

import numpy as np

from vla_lib.data.timeline import pose_history as _pose_history
from vla_lib.data.timeline import SensorWindow, resample_sensor_window
from vla_lib.rig.receivers import CameraReceiver, RobotReceiver, SensorReceiver
from vla_lib.runtime.actuators import ActionPublisher
from vla_lib.runtime.guard import SensorWatchdog


class LiveRobotIO:
    def __init__(self, live_cfg, data_cfg, recorder=None, action_log=None):
        self.cfg, self.data = live_cfg, data_cfg
        kw = dict(clock_window_s=live_cfg.clock_window_s, recorder=recorder)
        self.robot = RobotReceiver(live_cfg.robot_endpoint, capacity=int(live_cfg.robot_buffer_s * 100) + 100, **kw)
        self.camera = CameraReceiver(live_cfg.camera_endpoint, dict(live_cfg.camera_views), **kw)
        self.sensor = SensorReceiver(live_cfg.sensor_endpoint, capacity=int(live_cfg.sensor_buffer_s * 2000) + 256, **kw)
        self.receivers = {"robot": self.robot, "camera": self.camera, "sensor": self.sensor}
        self.publisher = self.actuator = ActionPublisher(live_cfg.action_endpoint, live_cfg.send_actions, action_log)
        self._decoded: dict[str, tuple[int, object]] = {}
        self.last_ages: dict | None = None  # the latest tick's stream ages (run_live streams each to ticks.jsonl)
        self._window = None
        self._watchdog: SensorWatchdog | None = None
        self._rows = max(64, int(data_cfg.sensor_window_s * 5000) + 16)  # enough raw rows for up to 5 kHz

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def start(self) -> "LiveRobotIO":
        for r in self.receivers.values():
            r.start_and_wait()
        return self

    def stop_watchdog(self) -> None:
        """The control loop is over: the streams ending now is the end of the run, not a fault."""
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None

    def stop(self) -> None:
        self.stop_watchdog()
        for r in self.receivers.values():
            r.stop()
        self.publisher.close()

    def wait_ready(self, timeout_s: float, need_sensor: bool = True) -> list[str]:
        """Wait (bounded) until a robot sample, a frame in every configured view and, if asked, sensor data came;
        returns what is still missing (empty = ready)."""
        deadline = time.time() + timeout_s
        while True:
            missing = self.missing(need_sensor)
            if not missing or time.time() > deadline:
                return missing
            time.sleep(0.02)

    def missing(self, need_sensor: bool = True) -> list[str]:
        out = [] if self.robot.n else ["robot"]
        if need_sensor and not self.sensor.n:
            out.append("sensor")
        with self.camera.lock:
            out += [v for v in self.data.views if v not in self.camera.latest]
        return out

    # -- clocks ----------------------------------------------------------------------------------------------------
    def offset(self, stream: str) -> float:
        """Seconds to add to a stream's stamps to put them on the robot clock (0 until both offsets exist)."""
        if stream == "robot":
            return 0.0
        a, b = self.receivers[stream].clock.value, self.robot.clock.value
        return 0.0 if a is None or b is None else a - b

    def begin(self) -> None:
        pass

    def now(self) -> float:
        off = self.robot.clock.value
        return time.time() - (off or 0.0)

    # -- RobotIO ---------------------------------------------------------------------------------------------------
    def views(self):
        from PIL import Image

        with self.camera.lock:
            latest = {v: self.camera.latest.get(v) for v in self.data.views}
        off = self.offset("camera")
        images, ident, captured = [], [], []
        for v in self.data.views:
            item = latest[v]
            if item is None:
                images.append(None), ident.append(-1)
                continue
            seq, stamp, _, jpeg = item
            cached = self._decoded.get(v)
            if cached is None or cached[0] != seq:
                with Image.open(_io.BytesIO(jpeg)) as im:
                    cached = (seq, im.convert("RGB"))
                self._decoded[v] = cached
            images.append(cached[1]), ident.append(seq), captured.append(stamp + off)
        return images, tuple(ident), (min(captured) if captured else self.now())

    def sensor_window(self, t: float | None = None):
        """The SensorWindow at t (default now). Its values array is reused by the next call (the loop consumes it
        within its tick, so a long run keeps no copies): copy it to keep it."""
        if not self.sensor.n:
            return None
        t = self.now() if t is None else t
        d = self.data
        off = self.offset("sensor")
        times, forces, alines = self.sensor.latest(self._rows, after=t - d.sensor_window_s - 2 * d.sensor_max_gap_s - off)
        window, valid, _ = resample_sensor_window(times + off, forces, alines, t,
                                                  d.sensor_window_s, d.sensor_window_size, d.sensor_max_gap_s)
        if self._window is None or self._window.shape != window.shape:
            self._window = np.empty_like(window)
        self._window[:] = window
        return SensorWindow(self._window, valid)

    def robot_samples(self, t: float, span_s: float):
        times, pose = self.robot.latest(span_s + 1.0)
        keep = times <= t  # only samples at or before t (no future sample enters the history)
        return times[keep], pose[keep]

    def pose_history(self, steps: int, t: float | None = None):
        t = self.now() if t is None else t
        times, pose = self.robot_samples(t, (steps + 1) * self.data.action_dt_s)
        if len(times) == 0:
            return np.zeros((steps, 6), np.float32)
        return _pose_history(times, pose, [t], steps, self.data.action_dt_s)[0]

    def robot_pose(self) -> np.ndarray | None:
        times, pose = self.robot_samples(self.now(), 0.5)
        return pose[-1].copy() if len(pose) else None  # a copy: a view would keep the whole slice alive per tick

    def stream_ages(self, t: float | None = None) -> dict[str, float | None]:
        """Seconds since the newest sample of each stream (robot clock): robot, sensor (when there is sensor data
        or live.require_sensor), camera (the oldest of the views' newest frames), and per view."""
        t = self.now() if t is None else t
        ages: dict[str, float | None] = {}
        with self.robot.lock:
            ages["robot"] = t - self.robot.times[(self.robot.n - 1) % self.robot.capacity] if self.robot.n else None
        if self.sensor.n or self.cfg.require_sensor:
            with self.sensor.lock:
                ages["sensor"] = t - (self.sensor.last_ts + self.offset("sensor")) if self.sensor.n else None
        off = self.offset("camera")
        with self.camera.lock:
            for v in self.data.views:
                item = self.camera.latest.get(v)
                ages[v] = None if item is None else t - (item[1] + off)
        views = [ages[v] for v in self.data.views if ages[v] is not None]
        ages["camera"] = max(views) if views else None
        self.last_ages = ages
        return ages

    def attach_guard(self, guard) -> None:
        def on_batch(stamps, forces, alines, arrived):
            guard.check(stamps + self.offset("sensor"), forces, alines, arrived)

        def on_error(e):  # a guard that cannot check must not fail open
            guard.latch.trip(f"sensor guard error: {type(e).__name__}: {e}", time.time())

        self.sensor.on_batch = on_batch
        self.sensor.on_guard_error = on_error
        self.stop_watchdog()
        self._watchdog = SensorWatchdog(guard).start()

    # -- report ----------------------------------------------------------------------------------------------------
    def stream_stats(self) -> dict:
        out = {name: r.stats.as_dict() for name, r in self.receivers.items()}
        out["camera"]["per_view"] = dict(self.camera.per_view)
        for name, r in self.receivers.items():
            out[name]["clock_offset_s"] = r.clock.value
        out["sensor"]["socket_rcvbuf_bytes"] = self.sensor.rcvbuf
        return out
