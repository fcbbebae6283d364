"""The real-time loop: a VL thread refreshes the features, a 10 Hz action loop acts on the latest ones.

The robot is reached only through `RobotIO` (clock, latest views, sensor window, pose history, action out); a user
wires the same loop to the robot by implementing those six methods. `ReplaySession` plays a recorded session back
as if live (its clock runs with the wall clock from a chosen start) and also knows the true chunk at any time, so the
replay measures accuracy as well as timing: action-step latency p50/p95/p99, deadline misses at the action rate,
VL refresh rate, feature staleness, and the chunk error with the features the loop really had (stale) against
features encoded from the frames current at each tick (fresh).

The same loop also runs on a simulated clock (`run_realtime(..., clock=rig.clock)`, vla_lib/sim/rig.py): one thread,
deterministic, no wall-clock sleeps. The action step is the same code (`_action_tick`); only the VL refresh differs:
instead of a thread, a new frame set is encoded when seen and its features become usable `vl_latency_s` of simulated
time later (one encode in flight at a time, as the thread).
"""
from __future__ import annotations

import threading
import time
from array import array
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from vla_lib.data.timeline import latest_frame_index, pose_deltas, pose_history, resample_sensor_window
from vla_lib.dims import POSE_DIMS


class RobotIO(Protocol):
    def begin(self) -> None: ...  # called once, right before the loop starts

    def now(self) -> float: ...  # robot-clock seconds

    def views(self) -> tuple[list, tuple, float]: ...  # (image per configured view or None, identity, capture time)

    def sensor_window(self) -> np.ndarray | None: ...  # (T, 1026) raw on the fixed grid, NaN rows = no sample

    def pose_history(self, steps: int) -> np.ndarray: ...  # (steps, 6) last pose deltas, oldest first

    def send_action(self, t: float, chunk: np.ndarray) -> None: ...


class ReplaySession:
    """A recorded session served as if live, from robot-clock time `start` (default: first time all streams run)."""

    def __init__(self, session, data_cfg, start: float | None = None):
        self.s, self.cfg = session, data_cfg
        self.cam_offset, self.sensor_offset = session.camera_offset(), session.sensor_offset()
        first = [f.times[0] + self.cam_offset for v, f in session.frames.items() if v in data_cfg.views and len(f.times)]
        floor = max([session.robot_times[0] + data_cfg.history_steps * data_cfg.action_dt_s, *first[:1]])
        if session.has_sensor:
            floor = max(floor, session.sensor.times[0] + self.sensor_offset + data_cfg.sensor_window_s)
        self.start = max(floor, start or floor)
        self.end = session.robot_times[-1] - data_cfg.horizon * data_cfg.action_dt_s
        self._wall0 = None
        self.actions: list[tuple[float, np.ndarray]] = []

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

    def sensor_window_at(self, t: float) -> np.ndarray | None:
        if not self.s.has_sensor:
            return None
        c = self.cfg
        window, valid, _ = resample_sensor_window(self.s.sensor.times + self.sensor_offset, self.s.sensor.forces,
                                                  self.s.sensor.alines, t, c.sensor_window_s, c.sensor_window_size,
                                                  c.sensor_max_gap_s)
        window[~valid] = np.nan
        return window

    def sensor_window(self):
        return self.sensor_window_at(self.now())

    def pose_history_at(self, t: float, steps: int) -> np.ndarray:
        return pose_history(self.s.robot_times, self.s.pose, [t], steps, self.cfg.action_dt_s)[0]

    def pose_history(self, steps: int):
        return self.pose_history_at(self.now(), steps)

    def send_action(self, t: float, chunk: np.ndarray) -> None:
        self.actions.append((t, chunk))

    def true_chunk(self, t: float) -> np.ndarray:
        return pose_deltas(self.s.robot_times, self.s.pose, np.array([t]), self.cfg.horizon, self.cfg.action_dt_s)[0]


@dataclass
class _Latest:
    features: object = None
    mask: object = None
    ident: tuple = ()
    captured: float = 0.0
    ready: float = 0.0


class TickColumns:
    """What the summary needs of every tick, as flat float columns (24 B a tick, no per-tick objects)."""

    def __init__(self):
        self.t, self.latency_ms, self.staleness_s = array("d"), array("d"), array("d")
        self.missed = self.skipped = 0

    def add(self, tick: dict) -> None:
        self.t.append(tick["t"])
        self.latency_ms.append(tick["latency_ms"])
        self.staleness_s.append(tick["staleness_s"])
        self.missed += bool(tick["missed"])
        self.skipped += tick.get("skipped_ticks", 0)


@dataclass
class RealtimeReport:
    ticks: list[dict] = field(default_factory=list)  # one per action step (none when they went to a tick sink)
    refreshes: list[dict] = field(default_factory=list)  # one per VL encode
    summary: dict = field(default_factory=dict)
    columns: TickColumns = field(default_factory=TickColumns)

    def add_tick(self, tick: dict, sink=None) -> None:
        self.columns.add(tick)
        if sink is None:
            self.ticks.append(tick)
        else:
            sink(tick)


def run_realtime(policy, io: RobotIO, instruction: str, duration_s: float, action_rate_hz: float = 10.0,
                 vl_rate_hz: float = 0.0, end: float | None = None, clock=None,
                 vl_latency_s: float = 0.0, tick_sink=None) -> RealtimeReport:
    """Run the loop for `duration_s` wall seconds (or until the robot clock passes `end`). With `clock` (an object
    with `now()` and `sleep_until(t)`, e.g. `SimRig.clock`) the loop runs on that clock instead: `duration_s` of
    its time, single-threaded, VL features usable `vl_latency_s` after their frames were read.

    With `tick_sink`, each finished tick goes to `tick_sink(tick)` and is not kept (`report.ticks` stays empty; the
    summary comes from `report.columns` either way): a live run of any length then keeps no per-tick objects. Kept,
    each tick's small arrays, allocated between the loop's transient buffers, pinned freed heap memory (glibc
    fragmentation): the live soak's RSS grew several times faster than the records themselves."""
    period = 1.0 / action_rate_hz
    if clock is not None:
        return _run_on_clock(policy, io, instruction, duration_s, period, clock, vl_latency_s, end, tick_sink)
    latest, lock, stop = _Latest(), threading.Lock(), threading.Event()
    report = RealtimeReport()
    errors: list[BaseException] = []

    def vl_worker():
        try:
            while not stop.is_set():
                t0 = time.perf_counter()
                images, ident, captured = io.views()
                if ident == latest.ident and vl_rate_hz == 0:  # nothing new to see: do not burn the accelerator
                    time.sleep(0.002)
                    continue
                feats, mask = policy.encode([instruction], [images])
                with lock:
                    latest.features, latest.mask, latest.ident = feats, mask, ident
                    latest.captured, latest.ready = captured, io.now()
                report.refreshes.append({"t": latest.ready, "encode_ms": (time.perf_counter() - t0) * 1e3})
                if vl_rate_hz:
                    time.sleep(max(0.0, 1.0 / vl_rate_hz - (time.perf_counter() - t0)))
        except BaseException as e:  # surfaced in the caller, never swallowed
            errors.append(e)
            stop.set()

    io.begin()
    worker = threading.Thread(target=vl_worker, name="vl-refresh", daemon=True)
    worker.start()
    while latest.features is None and not stop.is_set():  # the first features gate the first action
        time.sleep(0.001)
    wall_end = time.perf_counter() + duration_s
    next_tick = time.perf_counter()
    while not stop.is_set() and time.perf_counter() < wall_end and (end is None or io.now() < end):
        time.sleep(max(0.0, next_tick - time.perf_counter()))
        started = time.perf_counter()
        with lock:
            snapshot = _Latest(latest.features, latest.mask, latest.ident, latest.captured, latest.ready)
        tick = _action_tick(policy, io, snapshot)
        latency = tick["latency_ms"] / 1e3
        tick.update({"late_start_ms": (started - next_tick) * 1e3,
                     "missed": latency > period or started - next_tick > period})
        next_tick += period
        if next_tick < time.perf_counter():  # fell behind: skip the ticks we cannot make, count them
            skipped = int((time.perf_counter() - next_tick) // period) + 1
            tick["skipped_ticks"] = skipped
            next_tick += skipped * period
        report.add_tick(tick, tick_sink)
    stop.set()
    worker.join(timeout=30)
    if errors:
        raise errors[0]
    report.summary = _summarise(report, period)
    return report


def _action_tick(policy, io: RobotIO, latest: _Latest) -> dict:
    """One action step on the latest features: read the sensor window and the pose history, act, send."""
    started = time.perf_counter()
    t = io.now()
    window = io.sensor_window()
    history = io.pose_history(policy.history_steps) if policy.history_steps else None
    chunk = policy.act(latest.features, latest.mask, None if window is None else window[None],
                       None if history is None else history[None])[0]
    io.send_action(t, chunk)
    return {"t": t, "latency_ms": (time.perf_counter() - started) * 1e3, "staleness_s": t - latest.captured,
            "feature_age_s": t - latest.ready, "ident": latest.ident, "window": window, "history": history,
            "chunk": chunk}


def _run_on_clock(policy, io: RobotIO, instruction: str, duration_s: float, period: float, clock,
                  vl_latency_s: float, end: float | None, tick_sink=None) -> RealtimeReport:
    """The loop on a simulated clock: ticks at exact multiples of the period from the start, deterministic."""
    report = RealtimeReport()
    latest, pending = _Latest(), None  # pending: features being "encoded", usable from pending.ready

    def encode(t: float) -> _Latest:
        images, ident, captured = io.views()
        t0 = time.perf_counter()
        feats, mask = policy.encode([instruction], [images])
        report.refreshes.append({"t": t, "encode_ms": (time.perf_counter() - t0) * 1e3})
        return _Latest(feats, mask, ident, captured, t + vl_latency_s)

    io.begin()
    start = clock.now()
    latest = encode(start)  # the loop starts once the first features are ready, as the wall-clock loop waits
    latest.ready = start
    n_ticks = int(round(duration_s / period))
    for i in range(n_ticks):
        clock.sleep_until(start + i * period)
        t = clock.now()
        if end is not None and t >= end:
            break
        if pending is not None and pending.ready <= t + 1e-9:
            latest, pending = pending, None
        if pending is None and io.views()[1] != latest.ident:  # a new frame set: start encoding it
            pending = encode(t)
            if vl_latency_s <= 0:
                latest, pending = pending, None
        tick = _action_tick(policy, io, latest)
        tick.update({"late_start_ms": 0.0, "missed": False})
        report.add_tick(tick, tick_sink)
    clock.sleep_until(start + n_ticks * period)
    report.summary = _summarise(report, period)
    report.summary["clock"] = "simulated"
    return report


def _summarise(report: RealtimeReport, period: float) -> dict:
    c = report.columns
    lat, stale = np.asarray(c.latency_ms), np.asarray(c.staleness_s)
    if not len(lat):
        raise RuntimeError("the real-time loop ran no action step (the stream ended, or the first VL encode took "
                           "longer than the run)")
    enc = np.array([r["encode_ms"] for r in report.refreshes])
    span = (c.t[-1] - c.t[0]) if len(c.t) > 1 else 0.0
    skipped = c.skipped
    return {
        "action_steps": len(lat), "action_period_ms": period * 1e3,
        "action_latency_ms_p50": float(np.percentile(lat, 50)), "action_latency_ms_p95": float(np.percentile(lat, 95)),
        "action_latency_ms_p99": float(np.percentile(lat, 99)),
        "deadline_misses": c.missed + skipped, "skipped_ticks": skipped,
        "vl_refreshes": len(enc), "vl_encode_ms_p50": float(np.median(enc)) if len(enc) else None,
        "vl_refresh_hz": float(len(enc) / span) if span > 0 else None,
        "vl_max_rate_hz": 1e3 / float(np.median(enc)) if len(enc) else None,
        "staleness_s_p50": float(np.median(stale)), "staleness_s_max": float(stale.max()),
    }


def fresh_vs_stale(policy, replay: ReplaySession, instruction: str, report: RealtimeReport) -> dict:
    """Chunk MSE (6 pose dims) of what the loop sent (features as they were) against the same ticks re-run with
    features encoded from the frames current at each tick (fresh), both against the recorded truth."""
    fresh_cache: dict[tuple, tuple] = {}
    err_stale, err_fresh = [], []
    for tick in report.ticks:
        images, ident, _ = replay.frames_at(tick["t"])
        if ident not in fresh_cache:
            fresh_cache[ident] = policy.encode([instruction], [images])
        feats, mask = fresh_cache[ident]
        w, h = tick["window"], tick["history"]
        fresh = policy.act(feats, mask, None if w is None else w[None], None if h is None else h[None])[0]
        truth = replay.true_chunk(tick["t"])
        err_stale.append(((tick["chunk"][:, :POSE_DIMS] - truth) ** 2).mean())
        err_fresh.append(((fresh[:, :POSE_DIMS] - truth) ** 2).mean())
    return {"mse_loop_features": float(np.mean(err_stale)), "mse_fresh_features": float(np.mean(err_fresh)),
            "ticks_with_stale_features": int(sum(t["ident"] != replay.frames_at(t["t"])[1] for t in report.ticks))}
