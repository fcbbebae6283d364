"""The control loop: a VL refresh (a thread on the wall clock, a modelled latency on a simulated one) and a
fixed-rate action tick, with the runtime's executor, limits, fault responses and sensor guard.

Closed-loop evaluation (`SimRig`), the replay (`ReplayIO`) and `--mode live` (`LiveRobotIO`) run this loop with
the same `Runtime` objects; only the `RobotIO` and its actuator differ. One tick (`Runtime.tick`):
1. the faults seen now (stale robot / sensor / camera stream, a sensor window with no valid point, features
   older than `limits.max_feature_age_s` while frames arrive, the VL encoder's last error, the last tick's
   overrun), each answered as `runtime.faults` says (hold / stop / continue) and counted;
2. the policy on the latest features, the sensor window, the pose history and the contact memory; a chunk with
   NaN, or with a step beyond `limits.out_of_limits_factor` x the step limit, is a fault, never executed as it is;
3. the chunk is handed to the executor with its observation time and the time it is usable (after the measured
   or the injected inference delay), the executor picks and limits this tick's step, the actuator applies it.
The sensor guard runs beside the loop, on every sensor batch (runtime/guard.py).
"""
from __future__ import annotations

import threading
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from vla_lib.data.contact import ContactMemory
from vla_lib.runtime.executor import ChunkExecutor, Command, StopLatch
from vla_lib.runtime.guard import SensorGuard

LIMIT_REASONS = ("workspace", "step_mm", "step_deg", "horizon_exhausted", "no_pose", "no_chunk")


class ReleaseRefused(RuntimeError):
    """An operator's release while the sensor still reads a force over the limit."""


@dataclass
class Features:
    features: object = None
    mask: object = None
    ident: tuple = ()
    captured: float = 0.0  # capture time of the oldest frame they describe
    ready: float = 0.0  # when they became usable


class Runtime:
    """The safety stack of one run: limits, fault responses, the stop latch, the chunk executor and the sensor
    guard, around one actuator. `release()` is the operator's explicit release of a latched stop."""

    def __init__(self, cfg, period: float, actuator, oct_distance=None):
        self.cfg, self.period, self.actuator = cfg, period, actuator
        self.limits, self.responses = cfg.limits, cfg.faults
        # the actuator's stop and release run inside the latch's lock: a trip and a release never interleave
        self.latch = StopLatch(on_trip=actuator.stop, on_release=actuator.release)
        self.executor = ChunkExecutor(cfg.limits, period, cfg.execution, cfg.blend_decay, cfg.execution_latency_s,
                                      self.latch, on_fault=self.fault)
        self.guard = SensorGuard(cfg.limits, self.latch, self._guard_trip, oct_distance, enabled=cfg.guard)
        self.events: Counter = Counter()  # ticks per fault and per intervention kind (the guard adds from its thread)
        self._events_lock = threading.Lock()
        self.fault_log: list[dict] = []  # the first 100 faults, with their detail
        self.vl_error: str | None = None  # the VL encoder's last error, until an encode succeeds
        self.contact = ContactMemory(period)  # where the force began, kept for the run (the policy's memory input)
        self._overran = False

    @classmethod
    def from_config(cls, cfg, actuator, oct_distance=None) -> "Runtime":
        cfg.runtime.validate()
        return cls(cfg.runtime, cfg.data.action_dt_s, actuator, oct_distance)

    def _guard_trip(self, t_sample: float, reason: str, kind: str) -> None:
        self.count(kind)  # guard_stop | sensor_gap: the actuator's stop already went out, from the latch (on_trip)

    def count(self, kind: str) -> None:
        with self._events_lock:
            self.events[kind] += 1

    def fault(self, kind: str, t: float, detail: str = "") -> str:
        """Count a fault, apply its response (a `stop` trips the latch and the actuator's stop); returns it."""
        response = getattr(self.responses, kind)
        self.count(kind)
        if len(self.fault_log) < 100:
            self.fault_log.append({"kind": kind, "t": float(t), "detail": detail, "response": response})
        if response == "stop":
            self.latch.trip(f"{kind}{': ' + detail if detail else ''}", t)  # the actuator's stop, through the latch
        return response

    def release(self, now: float | None = None) -> str | None:
        """The operator releases a latched stop (returns what had stopped it): the latch, then the actuator (the
        simulated arm's frozen set point; live: a `release` message on the action endpoint). Refused while the newest
        sensor sample is still over the force limit or not finite (releasing would only move the arm into it again),
        or while the sensor is silent beyond `max_sensor_gap_s` (the arm would move unsupervised until the watchdog's
        next look). `now`: the simulated clock; None: the wall clock."""
        g = self.guard
        if g is None or not g.enabled or not self.latch.stopped:
            return self.latch.release()
        if not g.last_finite or g.last_excess_n > g.limits.force_limit_n:
            raise ReleaseRefused(f"release refused: the newest force sample is "
                                 f"{'not finite' if not g.last_finite else f'{g.last_excess_n:.2f} N from the baseline'}"
                                 f" (limit {g.limits.force_limit_n:g} N): withdraw the needle first")
        if now is None and getattr(self.actuator, "clock", None) is not None:
            now = self.actuator.now()  # the simulated rig: its own clock, not the wall clock's
        silent = g.silent_for(now)
        if silent is not None and silent > g.limits.max_sensor_gap_s:
            raise ReleaseRefused(f"release refused: no sensor sample for {silent * 1e3:.0f} ms (limit "
                                 f"{g.limits.max_sensor_gap_s * 1e3:g} ms): restore the sensor stream first")
        return self.latch.release()

    # -- one tick ------------------------------------------------------------------------------------------------
    def tick(self, policy, io, latest: Features, simulated: bool = False, inject_delay_s: float = 0.0) -> dict:
        started = time.perf_counter()
        t = io.now()
        holds: list[str] = []

        def seen(kind: str, detail: str = "") -> None:
            if self.fault(kind, t, detail) == "hold":
                holds.append(kind)

        ages = io.stream_ages()
        for stream in ("robot", "sensor", "camera"):
            if stream in ages:
                age, limit = ages[stream], getattr(self.limits, f"max_{stream}_age_s")
                if age is None or age > limit:
                    seen(f"{stream}_stale", "no data" if age is None else f"{age:.3f} s old")
        window = io.sensor_window()
        if window is not None and not window.valid.any():
            seen("sensor_invalid")
        if self.vl_error is not None:
            seen("vl_error", self.vl_error)
        cam = ages.get("camera")
        if cam is not None and cam <= self.limits.max_camera_age_s and t - latest.captured > self.limits.max_feature_age_s:
            seen("vl_stall", f"features {t - latest.captured:.2f} s old")
        if self._overran:
            self._overran = False
            seen("tick_overrun")
        history = io.pose_history(policy.history_steps) if policy.history_steps else None
        contact = self.contact.update(window, io.robot_pose())  # every tick; heads without the token ignore it
        chunk = np.asarray(policy.act(latest.features, latest.mask, None if window is None else window.batched(),
                                      None if history is None else history[None], contact[None])[0])
        done = t if simulated else io.now()  # on the simulated clock the policy costs no simulated time
        if not np.isfinite(chunk).all():
            seen("policy_nonfinite")
        else:
            bad = self.executor.out_of_limits(chunk)
            response = self.fault("policy_out_of_limits", t) if bad else "continue"
            if response == "hold":
                holds.append("policy_out_of_limits")
            if not bad or response == "continue":
                self.executor.add_chunk(t, chunk, done + inject_delay_s)
        cmd = self.executor.step(t, t if simulated else io.now(), io.robot_pose(), holds)
        self.actuator.apply(cmd)
        for r in cmd.reasons:
            if r in LIMIT_REASONS:
                self.count(r)
        if cmd.kind == "stop":
            self.count("stopped_ticks")
        latency = time.perf_counter() - started
        # on the simulated clock a tick costs what the policy says it did (`last_cost_s`, default nothing): the wall
        # time of a simulation on a busy CPU says nothing about the robot's deadline
        cost = getattr(policy, "last_cost_s", 0.0) if simulated else latency
        if cost > self.limits.overrun_factor * self.period:
            self._overran = True  # answered at the next tick (this one's command is out)
        return {"t": t, "latency_ms": latency * 1e3, "staleness_s": t - latest.captured,
                "feature_age_s": t - latest.ready, "ident": latest.ident, "window": window, "history": history,
                "contact": contact,
                "chunk": chunk, "command": cmd}

    def summary(self) -> dict:
        with self._events_lock:
            events = dict(self.events)
        return {"execution": self.cfg.execution, "guard": self.cfg.guard, "interventions": events,
                "stopped": self.latch.reason, "stops": list(self.latch.trips), "guard_trips": list(self.guard.trips),
                "force_baseline_n": self.guard.baseline, "faults_first": self.fault_log[:20]}


# -- the report ---------------------------------------------------------------------------------------------------
class TickColumns:
    """What the summary needs of every tick, as flat columns (no per-tick objects)."""

    def __init__(self):
        self.t, self.latency_ms, self.staleness_s = array("d"), array("d"), array("d")
        self.delay_steps, self.chunk_id, self.move = array("d"), array("q"), array("d")
        self.switch_jump = array("d")  # mm/s, at the ticks where the executed chunk changed
        self.missed = self.skipped = 0

    def add(self, tick: dict) -> None:
        cmd: Command = tick["command"]
        self.t.append(tick["t"])
        self.latency_ms.append(tick["latency_ms"])
        self.staleness_s.append(tick["staleness_s"])
        self.delay_steps.append(cmd.delay_steps)
        self.chunk_id.append(cmd.chunk_id)
        self.move.extend(cmd.delta[:3].tolist())
        if cmd.switch_jump_mm_s is not None:
            self.switch_jump.append(cmd.switch_jump_mm_s)
        self.missed += bool(tick["missed"])
        self.skipped += tick.get("skipped_ticks", 0)


@dataclass
class LoopReport:
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


def run_loop(policy, io, runtime: Runtime, instruction: str, duration_s: float, vl_rate_hz: float = 0.0,
             end: float | None = None, clock=None, vl_latency_s: float = 0.0, inject_delay_s: float = 0.0,
             tick_sink=None, until=None) -> LoopReport:
    """Run for `duration_s` wall seconds (or until the robot clock passes `end`), one tick per `runtime.period`.
    With `clock` (`now()`, `sleep_until(t)`: `SimRig.clock`) on that clock instead: single-threaded, deterministic,
    VL features usable `vl_latency_s` after their frames were read, chunks `inject_delay_s` after their tick.

    With `tick_sink`, each tick goes to `tick_sink(tick)` and is not kept (the summary comes from
    `report.columns`): a live run of any length keeps no per-tick objects (kept, they fragmented the heap).
    `until()` true ends a wall-clock run early (an operator ending the run, a benchmark)."""
    io.attach_guard(runtime.guard)
    if clock is not None:
        return _run_on_clock(policy, io, runtime, instruction, duration_s, clock, vl_latency_s, inject_delay_s, end,
                             tick_sink)
    latest, lock, stop = Features(), threading.Lock(), threading.Event()
    report = LoopReport()
    io.begin()
    worker = threading.Thread(target=_vl_worker, name="vl-refresh", daemon=True,
                              args=(policy, io, runtime, instruction, vl_rate_hz, latest, lock, stop, report))
    worker.start()
    first_deadline = time.perf_counter() + duration_s
    while latest.features is None and time.perf_counter() < first_deadline:  # the first features gate the first tick
        time.sleep(0.001)
    wall_end = time.perf_counter() + duration_s
    next_tick = time.perf_counter()
    try:
        _wall_ticks(policy, io, runtime, latest, lock, report, next_tick, wall_end, end, until, inject_delay_s,
                    tick_sink)
    except BaseException as e:  # the loop itself failed: the arm is stopped (latched) before the error goes up
        try:
            runtime.latch.trip(f"control loop error: {type(e).__name__}: {e}", time.time())
        finally:
            raise
    finally:
        stop.set()
        worker.join(timeout=30)
    report.summary = summarise(report, runtime)
    return report


def _vl_worker(policy, io, runtime: Runtime, instruction: str, vl_rate_hz: float, latest: Features,
               lock: threading.Lock, stop: threading.Event, report: LoopReport) -> None:
    """The VL refresh thread of the wall-clock loop: encodes the newest frames into `latest` until `stop`."""
    try:
        while not stop.is_set():
            t0 = time.perf_counter()
            images, ident, captured = io.views()
            if ident == latest.ident and vl_rate_hz == 0:  # nothing new to see: do not burn the accelerator
                time.sleep(0.002)
                continue
            try:
                encoded = policy.encode([instruction], [images])
            except Exception as e:  # a fault of the run (runtime.faults.vl_error), retried after a pause
                runtime.vl_error = f"{type(e).__name__}: {e}"
                stop.wait(0.1)
                continue
            if encoded is None:  # an encoder with nothing new (a stalled one): the features age (vl_stall)
                stop.wait(0.01)
                continue
            feats, mask = encoded
            with lock:
                latest.features, latest.mask, latest.ident = feats, mask, ident
                latest.captured, latest.ready = captured, io.now()
                runtime.vl_error = None
            report.refreshes.append({"t": latest.ready, "encode_ms": (time.perf_counter() - t0) * 1e3})
            if vl_rate_hz:
                stop.wait(max(0.0, 1.0 / vl_rate_hz - (time.perf_counter() - t0)))
    except BaseException as e:  # anything else ends the thread: a vl_error on every tick from now on
        runtime.vl_error = f"VL thread ended: {type(e).__name__}: {e}"


def _wall_ticks(policy, io, runtime: Runtime, latest: Features, lock: threading.Lock, report: LoopReport,
                next_tick: float, wall_end: float, end: float | None, until, inject_delay_s: float,
                tick_sink) -> None:
    """The wall-clock ticks, one per period from `next_tick`; run_loop's try around it stops the arm on an error."""
    period = runtime.period
    while latest.features is not None and time.perf_counter() < wall_end and (end is None or io.now() < end) \
            and not (until is not None and until()):
        time.sleep(max(0.0, next_tick - time.perf_counter()))
        started = time.perf_counter()
        with lock:
            snapshot = Features(latest.features, latest.mask, latest.ident, latest.captured, latest.ready)
        tick = runtime.tick(policy, io, snapshot, inject_delay_s=inject_delay_s)
        tick.update({"late_start_ms": (started - next_tick) * 1e3,
                     "missed": tick["latency_ms"] / 1e3 > period or started - next_tick > period})
        next_tick += period
        if next_tick < time.perf_counter():  # fell behind: skip the ticks we cannot make, count them
            skipped = int((time.perf_counter() - next_tick) // period) + 1
            tick["skipped_ticks"] = skipped
            next_tick += skipped * period
        report.add_tick(tick, tick_sink)


def _run_on_clock(policy, io, runtime: Runtime, instruction: str, duration_s: float, clock, vl_latency_s: float,
                  inject_delay_s: float, end: float | None, tick_sink=None) -> LoopReport:
    """The loop on a simulated clock: ticks at exact multiples of the period from the start, deterministic."""
    period = runtime.period
    report = LoopReport()
    pending = None  # features being "encoded", usable from pending.ready

    def encode(t: float) -> Features | None:
        images, ident, captured = io.views()
        t0 = time.perf_counter()
        try:
            encoded = policy.encode([instruction], [images])
        except Exception as e:  # runtime.faults.vl_error
            runtime.vl_error = f"{type(e).__name__}: {e}"
            return None
        if encoded is None:  # nothing came back (a stalled encoder): the features age (vl_stall)
            return None
        feats, mask = encoded
        runtime.vl_error = None
        report.refreshes.append({"t": t, "encode_ms": (time.perf_counter() - t0) * 1e3})
        return Features(feats, mask, ident, captured, t + vl_latency_s)

    io.begin()
    start = clock.now()
    latest = encode(start)  # the loop starts once the first features are ready, as the wall-clock loop waits
    if latest is None:
        raise RuntimeError(f"the first VL encode gave no features: {runtime.vl_error or 'nothing returned'}")
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
            if pending is not None and vl_latency_s <= 0:
                latest, pending = pending, None
        tick = runtime.tick(policy, io, latest, simulated=True, inject_delay_s=inject_delay_s)
        tick.update({"late_start_ms": 0.0, "missed": False})
        report.add_tick(tick, tick_sink)
    clock.sleep_until(start + n_ticks * period)
    report.summary = summarise(report, runtime)
    report.summary["clock"] = "simulated"
    return report


def smoothness(columns: TickColumns, period: float) -> dict:
    """Jerk of the executed steps (mm/s^3, norm of the translation's third difference, mean over the ticks) and the
    velocity jump at chunk switches (mm/s: this step against the previous chunk's step for the same time). A new
    chunk arrives every tick, so every tick is a chunk boundary: the jump says what switching to it cost."""
    v = np.asarray(columns.move).reshape(-1, 3) / period  # mm/s per tick
    jumps = np.asarray(columns.switch_jump)
    jerk = np.linalg.norm(v[2:] - 2 * v[1:-1] + v[:-2], axis=1) / period ** 2 if len(v) >= 3 else np.zeros(0)
    return {"jerk_mm_s3": float(jerk.mean()) if len(jerk) else None,
            "switch_jump_mm_s": float(jumps.mean()) if len(jumps) else None,
            "switch_jump_mm_s_max": float(jumps.max()) if len(jumps) else None, "chunk_switches": len(jumps)}


def summarise(report: LoopReport, runtime: Runtime) -> dict:
    c, period = report.columns, runtime.period
    lat, stale = np.asarray(c.latency_ms), np.asarray(c.staleness_s)
    if not len(lat):
        raise RuntimeError("the control loop ran no action step (the stream ended, or the first VL encode took "
                           "longer than the run)")
    enc = np.array([r["encode_ms"] for r in report.refreshes])
    span = (c.t[-1] - c.t[0]) if len(c.t) > 1 else 0.0
    delay = np.asarray(c.delay_steps)
    return {
        "action_steps": len(lat), "action_period_ms": period * 1e3,
        "action_latency_ms_p50": float(np.percentile(lat, 50)), "action_latency_ms_p95": float(np.percentile(lat, 95)),
        "action_latency_ms_p99": float(np.percentile(lat, 99)),
        "deadline_misses": c.missed + c.skipped, "skipped_ticks": c.skipped,
        "vl_refreshes": len(enc), "vl_encode_ms_p50": float(np.median(enc)) if len(enc) else None,
        "vl_refresh_hz": float(len(enc) / span) if span > 0 else None,
        "vl_max_rate_hz": 1e3 / float(np.median(enc)) if len(enc) else None,
        "staleness_s_p50": float(np.median(stale)), "staleness_s_max": float(stale.max()),
        "inference_delay_steps_p50": float(np.median(delay)), "inference_delay_steps_max": float(delay.max()),
        **smoothness(c, period), **runtime.summary(),
    }
