"""Safe chunk execution: which step of each predicted chunk goes out per tick, and the limits applied to it.

Per tick (`ChunkExecutor.step`):
1. Step choice (`live.execution`):
   - `first`: step 0 of the newest chunk (the original's "act on the first action").
   - `blend`: latency-aware temporal ensemble. The step is executed at t_exec = send time + `execution_latency_s`;
     every recent chunk whose horizon covers t_exec contributes its step k = floor((t_exec - t_obs) / dt), weighted
     by exp(-`blend_decay` * k), so fresher chunks (smaller k) weigh more. Stale or delayed chunks therefore
     contribute the step meant for *now*, not their first step.
2. Stops and holds, in this order (a hold sends a zero step):
   - force: |force - baseline| above `force_limit` in any sample of the current sensor window **stops motion for
     the rest of the run** (latched; restart the run to move again). The baseline is `force_baseline`, or, when that
     is null, the median force of the first sensor window seen (a tare at start).
   - stale robot or sensor stream (older than `max_stream_age_s` at the tick), or no robot pose yet: hold.
3. Limits, on what is left:
   - workspace: the commanded target (measured pose + step) is clipped into [`workspace_min`, `workspace_max`] mm;
   - step size and speed: the translation is scaled down to at most min(`max_step_mm`, `max_speed_mm_s` * dt), each
     angle clipped to min(`max_step_deg`, `max_speed_deg_s` * dt) (dt = the step's duration, data.action_dt_s).
The result (the 6 deltas for the next step and the absolute target pose) is published by `ActionPublisher` only
with `send_actions` (the CLI's `--send-actions`); otherwise it is logged as what would have been sent.
"""
from __future__ import annotations

import collections
import json
import math
import time
from dataclasses import dataclass

import numpy as np

from vla_lib.data.timeline import wrap_deg
from vla_lib.rig import wire


@dataclass
class SafetyLimits:
    max_step_mm: float = 2.0
    max_step_deg: float = 2.0
    max_speed_mm_s: float = 20.0
    max_speed_deg_s: float = 20.0
    workspace_min: tuple = (150.0, -150.0, 80.0)
    workspace_max: tuple = (350.0, 150.0, 250.0)
    force_limit: float = 5.0
    force_baseline: float | None = None
    max_stream_age_s: float = 0.25

    @classmethod
    def from_live(cls, live) -> "SafetyLimits":
        return cls(live.max_step_mm, live.max_step_deg, live.max_speed_mm_s, live.max_speed_deg_s,
                   tuple(live.workspace_min), tuple(live.workspace_max), live.force_limit, live.force_baseline,
                   live.max_stream_age_s)


class ActionPublisher:
    """ZMQ PUB on `endpoint` (bound) when `send` is true; a dry run (nothing leaves the process) otherwise.
    Every step is also appended to `log_path` (JSON lines) when given, flagged `sent` or not."""

    def __init__(self, endpoint: str, send: bool = False, log_path=None):
        self.endpoint, self.send = endpoint, send
        self.sent = 0
        self.dry = 0
        self._sock = None
        self._log = open(log_path, "w") if log_path else None
        if send:
            import zmq

            self._sock = zmq.Context.instance().socket(zmq.PUB)
            self._sock.setsockopt(zmq.SNDHWM, 1000)
            self._sock.bind(endpoint)

    def publish(self, t: float, delta: np.ndarray, target: np.ndarray, info: dict) -> None:
        now = time.time()
        if self._sock is not None:
            self._sock.send_multipart(wire.pack_action(t, now, delta, target))
            self.sent += 1
        else:
            self.dry += 1
        if self._log:
            self._log.write(json.dumps({"t": t, "send_time": now, "sent": self._sock is not None,
                                        "delta": np.round(delta, 5).tolist(), "target": np.round(target, 4).tolist(),
                                        **info}) + "\n")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=200)
        if self._log:
            self._log.close()


class ChunkExecutor:
    def __init__(self, limits: SafetyLimits, dt: float, mode: str = "first", blend_decay: float = 0.5,
                 execution_latency_s: float = 0.0, publisher: ActionPublisher | None = None):
        if mode not in ("first", "blend"):
            raise ValueError(f"live.execution must be 'first' or 'blend', got {mode!r}")
        self.limits, self.dt, self.mode = limits, dt, mode
        self.blend_decay, self.latency = blend_decay, execution_latency_s
        self.publisher = publisher
        self.chunks: collections.deque = collections.deque(maxlen=32)
        self.stopped: str | None = None
        self.baseline = limits.force_baseline
        self.events: collections.Counter = collections.Counter()

    # -- step choice -------------------------------------------------------------------------------------------
    def choose(self, t_obs: float, chunk: np.ndarray, t_send: float) -> tuple[np.ndarray, int]:
        """(the 6 deltas to execute, number of chunks that contributed)."""
        chunk = np.asarray(chunk, np.float64)[:, :6]
        self.chunks.append((t_obs, chunk))
        if self.mode == "first":
            return chunk[0].copy(), 1
        t_exec = t_send + self.latency
        total, weight, used = np.zeros(6), 0.0, 0
        for tc, c in self.chunks:
            k = int(math.floor((t_exec - tc) / self.dt + 1e-9))
            if 0 <= k < len(c):
                w = math.exp(-self.blend_decay * k)
                total += w * c[k]
                weight += w
                used += 1
        if weight == 0.0:  # no chunk covers t_exec (latency beyond the horizon): hold
            return np.zeros(6), 0
        return total / weight, used

    # -- limits --------------------------------------------------------------------------------------------------
    def limit(self, delta: np.ndarray, pose: np.ndarray | None, forces: np.ndarray | None,
              ages: dict[str, float | None]) -> tuple[np.ndarray, list[str]]:
        lim = self.limits
        delta = np.array(delta, np.float64)
        reasons: list[str] = []
        if forces is not None and len(forces):
            if self.baseline is None:
                self.baseline = float(np.median(forces))
            excess = float(np.max(np.abs(forces - self.baseline)))
            if excess > lim.force_limit and self.stopped is None:
                self.stopped = f"force |{excess:.3f}| above limit {lim.force_limit:g}"
                self.events["force_stop"] += 1
        if self.stopped:
            return np.zeros(6), ["stopped"]
        if pose is None:
            return np.zeros(6), ["no_pose"]
        for stream in ("robot", "sensor"):
            age = ages.get(stream)
            if stream in ages and (age is None or age > lim.max_stream_age_s):
                reasons.append(f"stale_{stream}")
        if reasons:
            for r in reasons:
                self.events[r] += 1
            return np.zeros(6), reasons
        target = pose[:3] + delta[:3]
        clipped = np.clip(target, lim.workspace_min, lim.workspace_max)
        if not np.array_equal(clipped, target):
            delta[:3] = clipped - pose[:3]
            reasons.append("workspace")
        max_t = min(lim.max_step_mm, lim.max_speed_mm_s * self.dt)
        norm = float(np.linalg.norm(delta[:3]))
        if norm > max_t:
            delta[:3] *= max_t / norm
            reasons.append("step_mm")
        max_r = min(lim.max_step_deg, lim.max_speed_deg_s * self.dt)
        if np.any(np.abs(delta[3:]) > max_r):
            delta[3:] = np.clip(delta[3:], -max_r, max_r)
            reasons.append("step_deg")
        for r in reasons:
            self.events[r] += 1
        return delta, reasons

    def step(self, t_obs: float, chunk: np.ndarray, t_send: float, pose: np.ndarray | None,
             forces: np.ndarray | None, ages: dict) -> dict:
        raw, n_chunks = self.choose(t_obs, chunk, t_send)
        delta, reasons = self.limit(raw, pose, forces, ages)
        target = np.full(6, np.nan) if pose is None else np.asarray(pose, np.float64) + delta
        if pose is not None:
            target[3:] = wrap_deg(target[3:])
        info = {"reasons": reasons, "chunks": n_chunks}
        if self.publisher is not None and pose is not None:
            self.publisher.publish(t_obs, delta, target, info)
        return {"t": t_obs, "t_send": t_send, "raw": raw, "delta": delta, "target": target,
                "pose": None if pose is None else np.asarray(pose, np.float64), "reasons": reasons}
