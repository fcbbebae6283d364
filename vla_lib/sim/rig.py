"""The simulated rig, a `RobotIO` (runtime/robot_io.py) and its own actuator: one simulated clock, a kinematic arm,
cameras and the OCT/force sensor.

Everything runs on `SimClock`: nothing sleeps on the wall clock. `clock.sleep_until(t)` advances the physics to t;
what the rig serves at time t is only what exists by then:
- the arm: the runtime's commands arrive through `apply(cmd)` (controllers that bypass the runtime, the recorder's
  demonstrator: `send_action(t, chunk)`, the chunk's first step) and start `action_latency_s` later; each command
  moves the set point by its delta over one action period (a later command supersedes it, a missing one leaves the
  arm at rest after one period); the pose follows the set point with a first-order lag (`tracking_tau_s`),
  integrated every 2 ms and logged at the robot's 100 Hz. `stop(t_sample, reason)` freezes the set point from
  t_sample + `action_latency_s` on (until `release()`);
- cameras at `camera_hz` (2 Hz) with a per-view skew, each frame drawn by the synthetic recorder's `draw_pad` (the
  pad at the episode's surface height) and `draw_needle` from the tip pose at its capture time, served once captured
  (latest frame <= now);
- the sensor at `sensor_hz` (650 Hz) with clock jitter, `sensor_drop_fraction` (2 %) of its packets dropped and
  `sensor_bursts_per_10s` (3) bursts of 10-25 ms lost per 10 s; each
  sample's value comes from the tip height at its own time (vla_lib.data.scenarios.sensor_values);
- proprioception: `pose_history` from the arm's logged samples up to now (vla_lib.data.timeline.pose_history).
The recorder (vla_lib.sim.demonstrations) records demonstrations on this rig; the closed-loop evaluation drives it.
"""
from __future__ import annotations

from collections import deque

import numpy as np
from PIL import Image

from vla_lib.data.scenarios import PREROLL_S, Episode, sensor_values
from vla_lib.data.synthetic import draw_needle, draw_pad
from vla_lib.data.timeline import SensorWindow, pose_history, resample_sensor_window, wrap_deg

INTERNAL_DT = 0.002
ROBOT_EVERY = 5  # log every 5th internal step: 100 Hz
SENSE_EVERY = 3  # sensor samples made (and guarded) every 3rd internal step: ~5 ms batches


class SimClock:
    """Simulated robot-clock seconds. `sleep_until` advances time (and the physics, through `on_advance`)."""

    simulated = True

    def __init__(self, t0: float = 0.0, on_advance=None):
        self.t = float(t0)
        self.on_advance = on_advance

    def now(self) -> float:
        return self.t

    def sleep_until(self, t: float) -> None:
        if t > self.t:
            if self.on_advance is not None:
                self.on_advance(t)
            self.t = float(t)


def _view_side(key: str) -> tuple[int, str]:
    """"View3_left" -> (3, "left"); "View5" -> (5, "oak")."""
    name, _, side = key.partition("_")
    return int(name[4:]), side or "oak"


class CameraModel:
    """Trigger times, per-view skew, capture times and rendering (the pad drawn at the episode's surface height)."""

    def __init__(self, ep: Episode, synth_cfg, keys: list[tuple[int, str]], end: float, rng):
        self.ep, self.w, self.h = ep, synth_cfg.image_width, synth_cfg.image_height
        triggers = np.arange(0.0, end, 1.0 / synth_cfg.camera_hz)  # every view has a frame before the first sample
        self.capture_times = {}
        for key in keys:
            skew = rng.uniform(0.0, 0.06)
            self.capture_times[key] = triggers + skew + rng.uniform(0, 0.01, len(triggers))
        self._bg: dict = {}
        self._frames: dict = {}

    def background(self, view: int, side: str) -> Image.Image:
        if (view, side) not in self._bg:
            self._bg[(view, side)] = draw_pad(view, side, self.ep.target_index, self.ep.surface_z, self.w, self.h)
        return self._bg[(view, side)]

    def render(self, view: int, side: str, k: int, tip: np.ndarray) -> Image.Image:
        return draw_needle(self.background(view, side), view, side, np.asarray(tip, np.float64), self.w, self.h)

    def latest(self, key: tuple[int, str], t: float) -> int:
        return int(np.searchsorted(self.capture_times[key], t, side="right")) - 1


class SimRig:
    """One episode on the simulated rig: a `RobotIO` (begin, now, views, sensor_window, pose_history, send_action)
    whose `clock` the real-time loop advances. `views`: the configured view keys (None: all nine, for recording)."""

    def __init__(self, ep: Episode, synth_cfg, views: list[str] | None = None, data_cfg=None, seed: int | None = None,
                 end: float | None = None):
        self.ep, self.task, self.cfg = ep, synth_cfg.task, synth_cfg
        self.data_cfg = data_cfg
        self.period = 0.1 if data_cfg is None else data_cfg.action_dt_s
        self.end = end if end is not None else PREROLL_S + self.task.episode_s + 1.0
        rng = np.random.default_rng([17, ep.seed] + ([] if seed is None else [seed]))
        self.noise = np.random.default_rng([19, ep.seed] + ([] if seed is None else [seed]))
        self.view_keys = views
        keys = ([(v, s) for v in range(1, 5) for s in ("left", "right")] + [(5, "oak")]) if views is None \
            else [_view_side(k) for k in views]
        self.cameras = CameraModel(ep, synth_cfg, keys, self.end, rng)
        # sensor sample times for the whole episode (timestamps only; values are made as time passes them)
        n = int(self.end * synth_cfg.sensor_hz)
        dt = 1.0 / synth_cfg.sensor_hz + rng.normal(0, 0.08e-3, n)
        times = np.cumsum(np.clip(dt, 0.2e-3, None))
        keep = rng.random(n) > self.task.sensor_drop_fraction
        for _ in range(max(1, int(round(self.task.sensor_bursts_per_10s * self.end / 10)))):
            start = rng.integers(0, n - 20)
            keep[start:start + rng.integers(7, 17)] = False
        self.sensor_times = times[keep & (times < self.end)]
        self.forces = np.zeros(len(self.sensor_times), np.float32)
        self.alines = np.zeros((len(self.sensor_times), 1025), np.float32)
        self.n_sensor = 0  # samples made so far (all with time <= now)
        # the arm: internal states every 2 ms
        steps = int(np.ceil(self.end / INTERNAL_DT)) + 2
        self.int_t = np.arange(steps) * INTERNAL_DT
        self.int_pose = np.zeros((steps, 6))
        self.int_pose[0] = ep.start
        self.setpoint = np.array(ep.start, np.float64)
        self.k = 0  # index of the last integrated internal step
        self.commands: deque = deque()
        self.active = None  # (t_apply, velocity)
        self.actions: list[tuple[float, np.ndarray]] = []
        self.executed: list = []  # the runtime's commands, as applied
        self.freeze_at: float | None = None  # set point frozen from this time (a stop)
        self.stops: list[dict] = []
        self.guard = None
        self.actuator = self
        self.clock = SimClock(0.0, self.advance_to)

    # -- physics ------------------------------------------------------------------------------------------------------
    def advance_to(self, t: float) -> None:
        t = min(t, self.int_t[-1])
        alpha = 1.0 - np.exp(-INTERNAL_DT / self.task.tracking_tau_s)
        pose = self.int_pose[self.k].copy()
        while self.int_t[self.k + 1] <= t + 1e-12:
            tau = self.int_t[self.k]
            while self.commands and self.commands[0][0] <= tau + 1e-12:
                self.active = self.commands.popleft()
            frozen = self.freeze_at is not None and tau >= self.freeze_at - 1e-12
            if not frozen and self.active is not None and tau < self.active[0] + self.period - 1e-12:
                self.setpoint += self.active[1] * INTERNAL_DT
            pose += (self.setpoint - pose) * alpha
            self.k += 1
            self.int_pose[self.k] = pose
            if self.k % SENSE_EVERY == 0:
                self._sense(self.int_t[self.k])
        self._sense(t)

    def _sense(self, t: float) -> None:
        """Make the sensor samples up to t (from the tip heights so far) and hand them to the guard; then its
        watchdog, on the simulated clock (a loss burst longer than limits.max_sensor_gap_s stops the arm)."""
        m = int(np.searchsorted(self.sensor_times, t, side="right"))
        if m > self.n_sensor:
            sl = slice(self.n_sensor, m)
            z = np.interp(self.sensor_times[sl], self.int_t[: self.k + 1], self.int_pose[: self.k + 1, 2])
            self.forces[sl], self.alines[sl] = sensor_values(self.ep, self.task, z, self.noise, self.sensor_times[sl])
            self.n_sensor = m
            if self.guard is not None:
                self.guard.check(self.sensor_times[sl], self.forces[sl], self.alines[sl])
        if self.guard is not None:
            self.guard.watch(t)

    def tip_at(self, t) -> np.ndarray:
        """Tip (x, y, z) at time(s) t <= now (interpolated on the 2 ms internal states)."""
        t = np.asarray(t, np.float64)
        if np.any(t > self.int_t[self.k] + 1e-9):
            raise ValueError(f"tip_at({float(np.max(t)):.3f}) is in the future (now {self.int_t[self.k]:.3f})")
        out = np.stack([np.interp(t, self.int_t[: self.k + 1], self.int_pose[: self.k + 1, d]) for d in range(3)], -1)
        return out

    def finish(self) -> None:
        """Run the clock to the end of the episode's streams."""
        self.clock.sleep_until(self.end)

    # -- RobotIO ------------------------------------------------------------------------------------------------------
    def begin(self) -> None:
        pass

    def now(self) -> float:
        return self.clock.now()

    def views(self) -> tuple[list, tuple, float]:
        t = self.now()
        images, ident, captured = [], [], []
        for key in [_view_side(k) for k in self.view_keys]:
            j = self.cameras.latest(key, t)
            ident.append(j)
            if j < 0:
                images.append(None)
                continue
            cache = self.cameras._frames
            if (key, j) not in cache:
                t_cap = self.cameras.capture_times[key][j]
                cache[(key, j)] = self.cameras.render(*key, j, self.tip_at(t_cap))
            images.append(cache[(key, j)])
            captured.append(self.cameras.capture_times[key][j])
        return images, tuple(ident), min(captured) if captured else t

    def sensor_window(self) -> SensorWindow:
        c = self.data_cfg
        t = self.now()
        n = self.n_sensor
        window, valid, _ = resample_sensor_window(self.sensor_times[:n], self.forces[:n], self.alines[:n], t,
                                                  c.sensor_window_s if c else 0.1, c.sensor_window_size if c else 65,
                                                  c.sensor_max_gap_s if c else 0.006)
        return SensorWindow(window, valid)

    def robot_log(self) -> tuple[np.ndarray, np.ndarray]:
        """(times, poses) the arm has reported so far at 100 Hz (angles wrapped, as the robot reports them)."""
        idx = np.arange(0, self.k + 1, ROBOT_EVERY)
        pose = self.int_pose[idx].copy()
        pose[:, 3:] = wrap_deg(pose[:, 3:])
        return np.round(self.int_t[idx], 6), pose

    def robot_pose(self) -> np.ndarray:
        return self.robot_log()[1][-1]

    def pose_history(self, steps: int) -> np.ndarray:
        t, pose = self.robot_log()
        return pose_history(t, pose, [self.now()], steps, self.period)[0]

    def send_action(self, t: float, chunk: np.ndarray) -> None:
        """A controller outside the runtime (the recorder's demonstrator): the chunk's first step, unlimited."""
        chunk = np.asarray(chunk, np.float64)
        self.actions.append((t, chunk))
        self.commands.append((t + self.task.action_latency_s, chunk[0, :6] / self.period))

    def stream_ages(self) -> dict:
        t = self.now()
        ages = {"robot": t - self.int_t[self.k - self.k % ROBOT_EVERY],
                "sensor": t - float(self.sensor_times[self.n_sensor - 1]) if self.n_sensor else None}
        latest = [self.cameras.capture_times[key][j] for key in map(_view_side, self.view_keys or [])
                  if (j := self.cameras.latest(key, t)) >= 0]
        ages["camera"] = t - min(latest) if latest else None
        return ages

    def attach_guard(self, guard) -> None:
        self.guard = guard

    # -- actuator (the runtime's commands) -----------------------------------------------------------------------
    def apply(self, cmd) -> None:
        if not np.isfinite(cmd.delta).all():  # the executor never emits one; the physics must never integrate one
            raise ValueError(f"non-finite step reached the simulated arm: {cmd.delta}")
        self.executed.append(cmd)
        self.commands.append((cmd.t_send + self.task.action_latency_s, np.asarray(cmd.delta, np.float64) / self.period))

    def stop(self, t_sample: float, reason: str) -> None:
        """Freeze the set point from t_sample + the arm's latency (the stop reaches the arm as a command does)."""
        at = t_sample + self.task.action_latency_s
        self.freeze_at = at if self.freeze_at is None else min(self.freeze_at, at)
        self.stops.append({"t_sample": t_sample, "freeze_at": at, "reason": reason})

    def release(self) -> None:
        self.freeze_at = None

    def sensor_log(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = self.n_sensor
        return self.sensor_times[:n], self.forces[:n], self.alines[:n]

    # -- truth, for metrics ---------------------------------------------------------------------------------------
    def depth_trace(self) -> tuple[np.ndarray, np.ndarray]:
        """(times, tip depth below the surface in mm, negative above) at the 2 ms internal states so far."""
        return self.int_t[: self.k + 1], self.ep.surface_z - self.int_pose[: self.k + 1, 2]


def run_controller(controller, rig: SimRig, duration_s: float, period: float = 0.1, start: float = PREROLL_S) -> None:
    """A 10 Hz loop on the rig's simulated clock for a controller that reads the rig directly (demonstrator, scripted
    baseline): chunk = controller(rig), sent at each tick."""
    rig.clock.sleep_until(start)
    n = int(round(duration_s / period))
    for i in range(n):
        t = start + i * period
        rig.clock.sleep_until(t)
        rig.send_action(t, controller(rig))
    rig.clock.sleep_until(start + n * period)
