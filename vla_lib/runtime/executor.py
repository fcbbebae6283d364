"""Chunk execution: which step of which predicted chunk goes out at each tick, limited.

Chunks arrive with the time of the observations they were computed from (`t_obs`) and the time they became usable
(`t_ready`: after the inference delay). Which step goes out is the execution mode's choice (`runtime.execution`,
one of `runtime/execution.py` `EXECUTION_MODES`: first, blend, rtc).

Then the limits (`Limits`, config `runtime.limits`): workspace (the commanded target clipped), step size and speed
(translation scaled down, angles clipped, both against min(step limit, speed x dt)). The latched stop (`StopLatch`,
also tripped by the sensor guard) and the tick's fault responses (`hold` / `stop`) come first. A step still not
finite after all this (a NaN blend weight, a NaN pose) is never emitted: `no_pose`, or the `policy_nonfinite` fault.
"""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field

import numpy as np

from vla_lib.data.timeline import wrap_deg
from vla_lib.runtime.configuration_runtime import Limits
from vla_lib.runtime.execution import EXECUTION_MODES, step_index


class StopLatch:
    """A latched stop: tripped by the sensor guard or a `stop` fault, released only by `release()` (an operator's
    explicit action). Thread-safe: the guard trips it from the sensor thread. `on_trip(t, reason)` (the actuator's
    stop) and `on_release()` run inside the latch's lock, so a trip and a release never interleave: a crossing during
    a release is either before it (released with it, by the operator's choice) or after it (a new stop)."""

    def __init__(self, on_trip=None, on_release=None):
        self._lock = threading.RLock()
        self.on_trip, self.on_release = on_trip, on_release
        self.reason: str | None = None
        self.t: float | None = None  # robot-clock time of what tripped it
        self.trips: list[dict] = []

    def trip(self, reason: str, t: float) -> bool:
        """True if this call tripped it (False: already stopped)."""
        with self._lock:
            if self.reason is not None:
                return False
            self.reason, self.t = reason, float(t)
            self.trips.append({"reason": reason, "t": float(t)})
            if self.on_trip is not None:
                self.on_trip(float(t), reason)
            return True

    def release(self) -> str | None:
        """Release a latched stop (and the actuator); nothing happens when none is latched."""
        with self._lock:
            was, self.reason, self.t = self.reason, None, None
            if was is not None and self.on_release is not None:
                self.on_release()
            return was

    @property
    def stopped(self) -> bool:
        return self.reason is not None


@dataclass
class Command:
    """What goes to the actuator for one tick."""

    t: float  # tick time (robot clock), the observations' time
    t_send: float
    kind: str  # "move" | "hold" | "stop"
    delta: np.ndarray  # (6,) the limited step (zero for hold / stop)
    target: np.ndarray  # (6,) measured pose + delta (NaN without a pose)
    raw: np.ndarray  # (6,) the chosen step before the limits
    reasons: list[str] = field(default_factory=list)
    chunk_id: int = -1  # which chunk the step came from (the newest contributing one), -1: none
    chunk_step: int = -1  # its step index
    delay_steps: float = 0.0  # inference delay of the newest usable chunk, in action steps
    pose: np.ndarray | None = None  # the measured pose the step was limited against
    # where the executed chunk changed: |this step - the previous chunk's step for the same time| / period (mm/s),
    # the velocity jump a chunk switch causes (None: no switch, or the previous chunk had no step for this time)
    switch_jump_mm_s: float | None = None


class ChunkExecutor:
    def __init__(self, limits: Limits, period: float, mode: str = "first", blend_decay: float = 0.5,
                 execution_latency_s: float = 0.0, latch: StopLatch | None = None, on_fault=None):
        if mode not in EXECUTION_MODES:
            raise ValueError(f"runtime.execution must be one of {list(EXECUTION_MODES)}, got {mode!r}")
        self.limits, self.dt, self.mode = limits, period, mode
        self.execution = EXECUTION_MODES[mode]
        self.blend_decay, self.latency = blend_decay, execution_latency_s
        self.latch = latch or StopLatch()
        # on_fault(kind, t, detail) -> response: the runtime's fault response (`Runtime.fault`); None: stop (latched)
        self.on_fault = on_fault
        self.pending: collections.deque = collections.deque()  # (t_ready, id, t_obs, chunk) not yet usable
        self.chunks: collections.deque = collections.deque(maxlen=32)  # usable: (id, t_obs, t_ready, chunk)
        self._next_id = 0
        self._last_cid = -1

    # -- chunks --------------------------------------------------------------------------------------------------
    def add_chunk(self, t_obs: float, chunk: np.ndarray, t_ready: float | None = None) -> int:
        cid = self._next_id
        self._next_id += 1
        self.pending.append((t_obs if t_ready is None else t_ready, cid, t_obs, np.asarray(chunk, np.float64)[:, :6]))
        return cid

    def _promote(self, t: float) -> None:
        while self.pending and self.pending[0][0] <= t + 1e-9:
            t_ready, cid, t_obs, chunk = self.pending.popleft()
            self.chunks.append((cid, t_obs, t_ready, chunk))

    def choose(self, t_send: float) -> tuple[np.ndarray, int, int, float, list[str]]:
        """(the 6 deltas, chunk id, step index, delay in steps of the newest usable chunk, reasons)."""
        self._promote(t_send)
        if not self.chunks:
            return np.zeros(6), -1, -1, 0.0, ["no_chunk"]
        _, t_obs, t_ready, _ = self.chunks[-1]
        step, cid, k, reasons = self.execution.pick(self.chunks, t_send + self.latency, self.dt, self.blend_decay)
        return step, cid, k, (t_ready - t_obs) / self.dt, reasons

    # -- limits --------------------------------------------------------------------------------------------------
    def step_limits(self) -> tuple[float, float]:
        lim = self.limits
        return min(lim.max_step_mm, lim.max_speed_mm_s * self.dt), min(lim.max_step_deg, lim.max_speed_deg_s * self.dt)

    def out_of_limits(self, chunk: np.ndarray) -> bool:
        """A chunk with a step far beyond the limits (a policy fault, not something to clamp and execute)."""
        steps = np.asarray(chunk, np.float64).reshape(-1, np.shape(chunk)[-1])[:, :6]
        max_t, max_r = self.step_limits()
        f = self.limits.out_of_limits_factor
        return bool(np.any(np.linalg.norm(steps[:, :3], axis=1) > f * max_t) or np.any(np.abs(steps[:, 3:]) > f * max_r))

    def limit(self, delta: np.ndarray, pose: np.ndarray) -> tuple[np.ndarray, list[str]]:
        lim = self.limits
        delta = np.array(delta, np.float64)
        reasons: list[str] = []
        target = pose[:3] + delta[:3]
        clipped = np.clip(target, lim.workspace_min, lim.workspace_max)
        if not np.array_equal(clipped, target):
            delta[:3] = clipped - pose[:3]
            reasons.append("workspace")
        max_t, max_r = self.step_limits()
        norm = float(np.linalg.norm(delta[:3]))
        if norm > max_t:
            delta[:3] *= max_t / norm
            reasons.append("step_mm")
        if np.any(np.abs(delta[3:]) > max_r):
            delta[3:] = np.clip(delta[3:], -max_r, max_r)
            reasons.append("step_deg")
        return delta, reasons

    # -- one tick ------------------------------------------------------------------------------------------------
    def _previous_step(self, cid: int, t_send: float) -> np.ndarray | None:
        """Where the executed chunk changes: the previous chunk's step for this time (None: no change, or it has none)."""
        last, self._last_cid = self._last_cid, cid
        if cid == last or last < 0 or cid < 0:
            return None
        prev = next(((tc, c) for c_id, tc, _, c in self.chunks if c_id == last), None)
        if prev is None:
            return None
        k = step_index(t_send + self.latency, prev[0], self.dt) if self.execution.timed else 0
        return prev[1][k] if 0 <= k < len(prev[1]) else None

    def step(self, t: float, t_send: float, pose: np.ndarray | None, holds: list[str] = ()) -> Command:
        """The command for this tick: stopped (latched) > held (`holds`: this tick's faults answered with hold, or
        no pose) > the chosen step, limited."""
        raw, cid, k, delay, reasons = self.choose(t_send)
        prev = self._previous_step(cid, t_send)
        pose = None if pose is None else np.asarray(pose, np.float64)
        zero = np.zeros(6)
        target = np.full(6, np.nan) if pose is None else pose.copy()
        if self.latch.stopped:
            return Command(t, t_send, "stop", zero, target, raw, [f"stopped: {self.latch.reason}"], cid, k, delay, pose)
        if pose is None or not np.isfinite(pose).all():  # nothing finite to limit a step against
            holds, pose = [*holds, "no_pose"], None
        if holds or reasons:
            return Command(t, t_send, "hold", zero, target, raw, [*holds, *reasons], cid, k, delay, pose)
        delta, limited = self.limit(raw, pose)
        target = pose + delta
        target[3:] = wrap_deg(target[3:])
        if not (np.isfinite(delta).all() and np.isfinite(target).all()):
            return self._nonfinite(t, t_send, raw, cid, k, delay, pose)
        # the jump is taken on what is executed (limited) against what the previous chunk would have executed
        jump = None if prev is None else float(np.linalg.norm(delta[:3] - self.limit(prev, pose)[0][:3]) / self.dt)
        return Command(t, t_send, "move", delta, target, raw, limited, cid, k, delay, pose, jump)

    def _nonfinite(self, t, t_send, raw, cid, k, delay, pose) -> Command:
        """A step that is not finite after execution and the limits (e.g. a NaN blend weight on finite chunks)
        never reaches an arm: it is the bad-policy-output fault (`policy_nonfinite`), answered hold or stop."""
        detail = "non-finite step after execution and limits"
        if self.on_fault is not None:
            self.on_fault("policy_nonfinite", t, detail)  # counts it; a `stop` response trips the latch
        else:
            self.latch.trip(f"policy_nonfinite: {detail}", t)
        kind = "stop" if self.latch.stopped else "hold"
        return Command(t, t_send, kind, np.zeros(6), pose.copy(), raw, [f"policy_nonfinite: {detail}"], cid, k, delay,
                       pose)
