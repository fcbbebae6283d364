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
"""
from __future__ import annotations

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
        t_sample = float(times[i])
        if not self.latch.trip(reason, t_sample):
            return False
        if self.on_trip is not None:
            self.on_trip(t_sample, reason)
        self.trips.append({"t_sample": t_sample, "reason": reason, "reaction_s": time.perf_counter() - arrived})
        return True
