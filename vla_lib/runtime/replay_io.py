"""`ReplayIO`: a recorded session served as a `RobotIO`, as if live (its clock runs with the wall clock from a chosen
start). It also knows the true chunk at any time, so the replay measures accuracy as well as timing. Its actuator
records the commands (nothing moves); the sensor guard sees the recorded samples as the clock passes them."""
from __future__ import annotations

import time

import numpy as np

from vla_lib.data.timeline import SensorWindow, latest_frame_index, pose_deltas, pose_history, resample_sensor_window
from vla_lib.runtime.robot_io import RecordingActuator


class ReplayIO:
    """A recorded session from robot-clock time `start` (default: the first time all streams run)."""

    def __init__(self, session, data_cfg, start: float | None = None):
        self.s, self.cfg = session, data_cfg
        self.cam_offset, self.sensor_offset = session.camera_offset(), session.sensor_offset()
        first = [f.times[0] + self.cam_offset for v, f in session.frames.items() if v in data_cfg.views and len(f.times)]
        floor = max([session.robot_times[0] + data_cfg.derived("history_steps") * data_cfg.action_dt_s, *first[:1]])
        if session.has_sensor:
            floor = max(floor, session.sensor.times[0] + self.sensor_offset + data_cfg.sensor_window_s)
        self.start = max(floor, start or floor)
        self.end = session.robot_times[-1] - data_cfg.horizon * data_cfg.action_dt_s
        self._wall0 = None
        self.actuator = RecordingActuator()
        self._guard, self._guarded = None, 0

    @property
    def commands(self) -> list:
        return self.actuator.commands

    def begin(self) -> None:
        self._wall0 = time.perf_counter()

    def now(self) -> float:
        return self.start + (time.perf_counter() - self._wall0)

    def frames_at(self, t: float) -> tuple[list, tuple, float]:
        paths, ident, captured = [], [], []
        for view in self.cfg.views:
            fl = self.s.frames[view]
            j = int(latest_frame_index(fl.times + self.cam_offset, np.array([t]))[0]) if len(fl.times) else -1
            paths.append(fl.paths[j] if j >= 0 else None)
            ident.append(j)
            if j >= 0:
                captured.append(fl.times[j] + self.cam_offset)
        return paths, tuple(ident), min(captured) if captured else t

    def views(self):
        return self.frames_at(self.now())

    def sensor_window_at(self, t: float) -> SensorWindow | None:
        if not self.s.has_sensor:
            return None
        c = self.cfg
        window, valid, _ = resample_sensor_window(self.s.sensor.times + self.sensor_offset, self.s.sensor.forces,
                                                  self.s.sensor.alines, t, c.sensor_window_s, c.sensor_window_size,
                                                  c.sensor_max_gap_s)
        return SensorWindow(window, valid)

    def sensor_window(self):
        t = self.now()
        if self._guard is not None and self.s.has_sensor:  # the samples the clock has passed since the last look
            times = self.s.sensor.times + self.sensor_offset
            n = int(np.searchsorted(times, t, side="right"))
            if n > self._guarded:
                sl = slice(self._guarded, n)
                self._guard.check(times[sl], self.s.sensor.forces[sl], self.s.sensor.alines[sl])
                self._guarded = n
        return self.sensor_window_at(t)

    def pose_history_at(self, t: float, steps: int) -> np.ndarray:
        return pose_history(self.s.robot_times, self.s.pose, [t], steps, self.cfg.action_dt_s)[0]

    def pose_history(self, steps: int):
        return self.pose_history_at(self.now(), steps)

    def robot_pose(self) -> np.ndarray | None:
        j = int(np.searchsorted(self.s.robot_times, self.now(), side="right")) - 1
        return None if j < 0 else np.asarray(self.s.pose[j], np.float64)

    def stream_ages(self) -> dict:
        t = self.now()
        j = int(np.searchsorted(self.s.robot_times, t, side="right")) - 1
        ages = {"robot": None if j < 0 else t - float(self.s.robot_times[j])}
        if self.s.has_sensor:
            times = self.s.sensor.times + self.sensor_offset
            k = int(np.searchsorted(times, t, side="right")) - 1
            ages["sensor"] = None if k < 0 else t - float(times[k])
        latest = []  # per view with a frame by now: its newest frame's time; the camera age is the oldest's
        for view in self.cfg.views:
            times = self.s.frames[view].times + self.cam_offset
            j = int(latest_frame_index(times, np.array([t]))[0]) if len(times) else -1
            if j >= 0:
                latest.append(float(times[j]))
        ages["camera"] = t - min(latest) if latest else None
        return ages

    def attach_guard(self, guard) -> None:
        self._guard = guard

    def true_chunk(self, t: float) -> np.ndarray:
        return pose_deltas(self.s.robot_times, self.s.pose, np.array([t]), self.cfg.horizon, self.cfg.action_dt_s)[0]
