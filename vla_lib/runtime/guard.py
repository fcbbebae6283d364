"""The sensor-rate guard: contact force (and the OCT distance, where a decoder is given) checked on every sensor
batch as it arrives, in the thread that receives it, independent of the action tick and the VL thread.

The first sample past a limit trips the stop latch and calls `on_trip(t_sample, reason)` at once: the actuator's
stop (simulation: the set point freezes at t_sample + the arm's latency; live: a stop message on the action
endpoint). `trips` records, per trip, the crossing sample's time and the seconds from the batch's arrival to the
actuator's stop having been issued (`reaction_s`). Only `StopLatch.release()` (an operator) moves the arm again.

The force baseline: `limits.force_baseline_n`, or the median of the first `limits.tare_s` of samples (a tare in
free air at start). During the tare every sample is checked against the very first sample's value, and a tare with a
sample more than half the limit from it (contact while taring), or the first sample or the median lies more
than `limits.max_tare_offset_n` from the sensor's free-air reading `limits.free_air_force_n` (contact at start: a
restart in tissue), trips the stop instead of becoming the baseline; the force is then measured from free air (from
the first sample only where no bound is set), so a release never makes the contact force the new zero. A non-finite
force sample trips the stop too (a saturated or failing sensor is not "no contact").

The sensor-rate watchdog (`watch`): no sample for longer than `limits.max_sensor_gap_s` trips the same stop (kind
`sensor_gap`, its trip records `gap_s`, the time from the last sample to the stop), without waiting for the action
tick's `sensor_stale` (0.25 s, ~5 mm at 20 mm/s). Simulation: the rig calls it from its physics on the simulated
clock; live: `SensorWatchdog`, a thread of its own, every `max_sensor_gap_s / 8`.
"""
from __future__ import annotations

import threading
import time

import numpy as np

from vla_lib.runtime.executor import StopLatch
from vla_lib.runtime.configuration_runtime import Limits


class SensorGuard:
    def __init__(self, limits: Limits, latch: StopLatch, on_trip=None, oct_distance=None, enabled: bool = True):
        self.limits, self.latch, self.on_trip = limits, latch, on_trip
        self.oct_distance = oct_distance  # alines (N, 1025) -> distances (N,) in mm, NaN where no surface
        self.enabled = enabled
        self.baseline = limits.force_baseline_n
        self._tare: list[np.ndarray] = []
        self._tare_t0: float | None = None
        self._first: float | None = None  # the first sample's force: the reference until the tare is done
        self.samples = 0
        self.peak_excess_n = 0.0
        self.last_excess_n, self.last_finite = 0.0, True
        self.trips: list[dict] = []
        self._last: tuple[float, float] | None = None  # the newest sample: (robot-clock time, perf_counter arrival)

    def _update_tare(self, times: np.ndarray, forces: np.ndarray) -> str | None:
        """Collect the tare; when complete, set the baseline or return why it cannot be one."""
        finite = np.isfinite(forces) & np.isfinite(times)
        if self._tare_t0 is None:
            if not finite.any():
                return None  # no reference yet (the non-finite samples trip the stop themselves)
            self._tare_t0, self._first = float(times[finite][0]), float(forces[finite][0])
            if not self._near_free_air(self._first):  # contact at the very first sample: no need to wait the tare
                self._tare = []
                self.baseline = self.limits.free_air_force_n
                return self._contact_at_start(self._first)
        self._tare.append(forces[finite & (times < self._tare_t0 + self.limits.tare_s)])
        if times[-1] < self._tare_t0 + self.limits.tare_s:
            return None
        samples = np.concatenate(self._tare)
        self._tare = []
        median = float(np.median(samples)) if len(samples) else float("nan")
        bounded = self.limits.max_tare_offset_n is not None
        moved = float(np.abs(samples - self._first).max()) if len(samples) else float("nan")
        if not np.isfinite(median) or moved > 0.5 * self.limits.force_limit_n:  # any tare sample, not just the median
            # the stop is latched; the force is measured from free air, never from a sample taken in contact
            self.baseline = self.limits.free_air_force_n if bounded else self._first
            return (f"tare not in free air: the force moved up to {moved:.3f} N from the first sample during the tare "
                    f"(median {median:.3f} N)")
        if not self._near_free_air(median):
            self.baseline = self.limits.free_air_force_n  # contact at start (a restart in tissue); the stop is latched
            return self._contact_at_start(median)
        self.baseline = median
        return None

    def _near_free_air(self, force: float) -> bool:
        bound = self.limits.max_tare_offset_n
        return bound is None or abs(force - self.limits.free_air_force_n) <= bound

    def _contact_at_start(self, force: float) -> str:
        free_air, bound = self.limits.free_air_force_n, self.limits.max_tare_offset_n
        return (f"tare {force:.3f} N lies {force - free_air:+.3f} N from the sensor's free-air reading "
                f"(runtime.limits.free_air_force_n {free_air:g} N, max_tare_offset_n {bound:g} N): contact at start, "
                "not the sensor's bias (withdraw the needle to free air; a probe that reads otherwise in free air: "
                "set runtime.limits.free_air_force_n)")

    def check(self, times, forces, alines=None, arrived: float | None = None) -> bool:
        """One batch (robot-clock times, forces, A-lines). True when this batch tripped the stop."""
        arrived = time.perf_counter() if arrived is None else arrived
        times, forces = np.asarray(times, np.float64), np.asarray(forces, np.float64)
        if not len(times) or not self.enabled:
            return False
        self.samples += len(times)
        finite_t = times[np.isfinite(times)]
        if len(finite_t):  # one tuple, swapped whole: the watchdog's thread reads it
            self._last = (float(finite_t.max()), arrived)
        i, reason = None, None
        bad = np.nonzero(~np.isfinite(forces))[0]
        if len(bad):
            i, reason = int(bad[0]), "non-finite force sample"
        tare_problem = self._update_tare(times, forces) if self.baseline is None else None
        base = self.baseline if self.baseline is not None else self._first
        excess = np.zeros(len(forces)) if base is None else np.abs(np.where(np.isfinite(forces), forces, base) - base)
        self.peak_excess_n = max(self.peak_excess_n, float(excess.max()))
        # the newest sample's state, for an operator's release (runtime.Runtime.release refuses while it is over)
        self.last_excess_n, self.last_finite = float(excess[-1]), bool(np.isfinite(forces[-1]))
        over = np.nonzero(excess > self.limits.force_limit_n)[0]
        if len(over) and (i is None or over[0] < i):
            i, reason = int(over[0]), f"force {excess[over[0]]:.3f} N above limit {self.limits.force_limit_n:g} N"
        if tare_problem:  # the refused tare is the cause, even where the force check also fired
            i, reason = (len(times) - 1 if i is None else i), tare_problem
        if self.oct_distance is not None and self.limits.min_oct_distance_mm is not None and alines is not None:
            dist = self.oct_distance(np.asarray(alines))
            close = np.nonzero(dist < self.limits.min_oct_distance_mm)[0]
            if len(close) and (i is None or close[0] < i):
                i = int(close[0])
                reason = f"OCT distance {dist[i]:.2f} mm below limit {self.limits.min_oct_distance_mm:g} mm"
        if i is None or self.latch.stopped:
            return False
        return self._trip(float(times[i]), reason, arrived, "guard_stop")

    def _trip(self, t: float, reason: str, since: float, kind: str, **extra) -> bool:
        """Trip the latch (the actuator's stop goes out inside it); `reaction_s` is from `since` (perf_counter) to
        then. `on_trip(t, reason, kind)` (the runtime's count) comes after: the stop never waits for it."""
        if not self.latch.trip(reason, t):
            return False
        self.trips.append({"t_sample": t, "reason": reason, "kind": kind, "reaction_s": time.perf_counter() - since,
                           **extra})
        if self.on_trip is not None:
            self.on_trip(t, reason, kind)
        return True

    def silent_for(self, now: float | None = None, last: tuple[float, float] | None = None) -> float | None:
        """Seconds since the newest sample (robot clock with `now`, else wall clock since its arrival); None before
        the first one. `last`: a `_last` the caller already read."""
        last = self._last if last is None else last
        if last is None:
            return None
        t_last, arrived = last
        return (now - t_last) if now is not None else time.perf_counter() - arrived

    def watch(self, now: float | None = None) -> bool:
        """The watchdog: True when it tripped the stop because no sample came for `limits.max_sensor_gap_s`.
        `now`: the simulated clock (robot time); None: the wall clock, measured from the newest sample's arrival.
        Nothing before the first sample (the loop waits for the sensor stream; no data at all is `sensor_stale`)."""
        started, last = time.perf_counter(), self._last  # one read: the receiver thread swaps `_last` whole
        if last is None or not self.enabled or self.latch.stopped:
            return False
        t_last = last[0]
        gap = self.silent_for(now, last)
        if not gap > self.limits.max_sensor_gap_s:
            return False
        t_stop = t_last + gap  # on the robot clock: when the watchdog saw it
        reason = f"sensor gap: no sample for {gap * 1e3:.1f} ms (limit {self.limits.max_sensor_gap_s * 1e3:g} ms)"
        return self._trip(t_stop, reason, started, "sensor_gap", t_last_sample=t_last, gap_s=gap)


class SensorWatchdog:
    """Live: `guard.watch()` every `max_sensor_gap_s / 8` in a thread of its own, so a sensor stream that stops is
    noticed within 1.125 x the gap whatever the receiver, the action tick and the VL thread are doing. A watch
    that raises latches the stop (it must not fail open)."""

    def __init__(self, guard: SensorGuard):
        self.guard, self.period_s = guard, guard.limits.max_sensor_gap_s / 8
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sensor-watchdog", daemon=True)

    def start(self) -> "SensorWatchdog":
        self._thread.start()
        return self

    def stop(self, timeout: float = 1.0) -> None:
        self._halt.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._halt.wait(self.period_s):
            try:
                self.guard.watch()
            except Exception as e:
                self.guard.latch.trip(f"sensor watchdog error: {type(e).__name__}: {e}", time.time())
