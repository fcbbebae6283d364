"""The sensor-rate guard: contact force (and the OCT distance, where a decoder is given) checked on every sensor
batch as it arrives, in the thread that receives it, independent of the action tick and the VL thread.

The first sample past a limit trips the stop latch and calls `on_trip(t_sample, reason)` at once: the actuator's
stop (simulation: the set point freezes at t_sample + the arm's latency; live: a stop message on the action
endpoint). `trips` records, per trip, the crossing sample's time and the seconds from the batch's arrival to the
actuator's stop having been issued (`reaction_s`). Only `StopLatch.release()` (an operator) moves the arm again.

The force baseline: `limits.force_baseline_n`, or the median of the first `limits.tare_s` of samples (a tare in
free air at start; until it is done only samples beyond the limit from the first sample's value trip the guard).
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
        self.samples = 0
        self.peak_excess_n = 0.0
        self.trips: list[dict] = []

    def _update_tare(self, times: np.ndarray, forces: np.ndarray) -> None:
        if self._tare_t0 is None:
            self._tare_t0 = float(times[0])
        self._tare.append(forces[times < self._tare_t0 + self.limits.tare_s])
        if times[-1] >= self._tare_t0 + self.limits.tare_s:
            self.baseline = float(np.median(np.concatenate(self._tare)))
            self._tare = []

    def check(self, times, forces, alines=None, arrived: float | None = None) -> bool:
        """One batch (robot-clock times, forces, A-lines). True when this batch tripped the stop."""
        arrived = time.perf_counter() if arrived is None else arrived
        times, forces = np.asarray(times, np.float64), np.asarray(forces, np.float64)
        if not len(times) or not self.enabled:
            return False
        self.samples += len(times)
        if self.baseline is None:
            self._update_tare(times, forces)
        base = self.baseline if self.baseline is not None else float(np.median(forces[:1]))
        excess = np.abs(forces - base)
        self.peak_excess_n = max(self.peak_excess_n, float(excess.max()))
        over = np.nonzero(excess > self.limits.force_limit_n)[0]
        i, reason = (int(over[0]), f"force {excess[over[0]]:.3f} N above limit {self.limits.force_limit_n:g} N") \
            if len(over) else (None, None)
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
