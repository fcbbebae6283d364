"""Faults injected into a simulated run, to rehearse the runtime's responses (runtime.faults) before a robot sees
them. `FaultyIO` wraps a `RobotIO` (streams that stop, a sensor window that goes invalid); `FaultyPolicy` wraps a
policy (the VL encoder raising or stalling, NaN chunks, a step far beyond the limits, an overrunning tick). Times
are on the rig's clock (seconds); None = that fault never happens."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vla_lib.data.timeline import sensor_grid


@dataclass
class Faults:
    sensor_stops_at: float | None = None
    robot_stops_at: float | None = None
    cameras_stop_at: float | None = None
    sensor_invalid_at: float | None = None  # every point of the window invalid from then on
    vl_raises_at: float | None = None  # every encode from then on raises
    vl_stalls_at: float | None = None  # every encode from then on returns nothing (it never finishes)
    nan_at: float | None = None  # the policy's chunks are NaN from then on
    jump_at: float | None = None  # one chunk with a 50 mm step, at the first tick from then on
    overrun_at: float | None = None  # one tick's act() costs 1.5 periods (reported as last_cost_s, no sleep)


def _after(t, at) -> bool:
    return at is not None and t >= at - 1e-9


class FaultyIO:
    """A RobotIO whose streams fail as `faults` says; everything else is the wrapped rig's."""

    def __init__(self, io, faults: Faults):
        self.io, self.faults = io, faults
        self._frozen_views = None
        self._last_pose = None

    def __getattr__(self, name):
        return getattr(self.io, name)

    def sensor_window(self):
        t, f = self.io.now(), self.faults
        window = self.io.sensor_window()
        if window is None:
            return None
        if _after(t, f.sensor_invalid_at):
            return window.invalid_where(np.ones(len(window.valid), bool))
        if _after(t, f.sensor_stops_at):  # no sample after the stop: the grid points past it are invalid
            grid = sensor_grid(t, self.io.data_cfg.sensor_window_s, len(window.valid))  # the window's own grid
            window = window.invalid_where(grid > f.sensor_stops_at + self.io.data_cfg.sensor_max_gap_s)
        return window

    def views(self):
        if _after(self.io.now(), self.faults.cameras_stop_at):
            if self._frozen_views is None:
                self._frozen_views = self.io.views()
            return self._frozen_views
        return self.io.views()

    def robot_pose(self):
        if _after(self.io.now(), self.faults.robot_stops_at):
            return self._last_pose
        self._last_pose = self.io.robot_pose()
        return self._last_pose

    def attach_guard(self, guard) -> None:
        cut = self.faults.sensor_stops_at

        class _Cut:  # the guard sees no sample after an injected sensor stop either (its watchdog: a gap)
            def watch(self, now=None):
                return guard.watch(now)

            def check(self, times, forces, alines=None, arrived=None):
                keep = np.asarray(times) <= (np.inf if cut is None else cut)
                return guard.check(np.asarray(times)[keep], np.asarray(forces)[keep],
                                   None if alines is None else np.asarray(alines)[keep], arrived)

        self.io.attach_guard(_Cut())

    def stream_ages(self):
        t, f = self.io.now(), self.faults
        ages = dict(self.io.stream_ages())
        for stream, at in (("sensor", f.sensor_stops_at), ("robot", f.robot_stops_at), ("camera", f.cameras_stop_at)):
            if _after(t, at) and stream in ages:
                ages[stream] = max(ages[stream] or 0.0, t - at)
        return ages


class FaultyPolicy:
    """A policy whose encoder and action head fail as `faults` says, on `clock`."""

    def __init__(self, policy, faults: Faults, clock, period: float = 0.1):
        self.policy, self.faults, self.clock, self.period = policy, faults, clock, period
        self._jumped = self._overran = False
        self.last_cost_s = 0.0  # what the last act() cost on the rig's clock (the loop's overrun check reads it)

    @property
    def history_steps(self) -> int:
        return self.policy.history_steps

    def encode(self, instructions, views):
        t, f = self.clock.now(), self.faults
        if _after(t, f.vl_raises_at):
            raise RuntimeError("injected VL encoder fault")
        if _after(t, f.vl_stalls_at):
            return None
        return self.policy.encode(instructions, views)

    def act(self, *args, **kw):
        t, f = self.clock.now(), self.faults
        chunk = np.array(self.policy.act(*args, **kw), np.float64)
        if _after(t, f.nan_at):
            chunk[:] = np.nan
        if _after(t, f.jump_at) and not self._jumped:
            self._jumped = True
            chunk[..., 2] = -50.0
        self.last_cost_s = 0.0
        if _after(t, f.overrun_at) and not self._overran:
            self._overran = True
            self.last_cost_s = 1.5 * self.period
        return chunk
