"""The target surface from the sensor alone, on a tissue of several interfaces with an unknown A-line gain, offset
and force bias: what the demonstrator reads.

Before contact, the surface ahead is the nearest reflection the tip has not passed by more than `PASSED_MM` (a film
passed that far without contact force is not the target). Contact is the force rising `CONTACT_N` above a baseline
that follows the force's slow drift in free air (a force off the sensor's free-air reading at the start is contact
already); at that moment the target is the reflection the tip has just passed (the deepest one at or behind the
tip: films lie behind it, deeper layers still ahead). From then on that reflection is tracked through each window,
~8 ms at a time (interfaces are at least MIN_SEPARATION_MM apart).
"""
from __future__ import annotations

import numpy as np

from vla_lib.data.contact import ContactOnset
from vla_lib.data.tissue import FORCE_BASELINE, MIN_SEPARATION_MM, tip_distance

PROMINENCE = 150.0  # a reflection stands this far above the A-line's floor (the weakest target: 800 x 0.5 x 0.7)
PASSED_MM = 0.5  # an interface this far behind the tip without contact force is a film, not the target
ONSET_MM = 0.1  # the target's distance assumed at contact when no reflection shows it
AHEAD_MM = 0.05  # at contact, reflections up to this far ahead may still be the target (centroid noise)
TRACK_MM = MIN_SEPARATION_MM / 2  # the tracked reflection moves less than this per 5 rows (up to 20 mm/s)
_SMOOTH = np.ones(5) / 5


def reflections(aline: np.ndarray, task) -> np.ndarray:
    """Tip-to-interface distances (mm, ascending) of the reflections in one A-line (1025,): local maxima standing
    PROMINENCE above the line's median, each at its half-maximum centroid (unbiased also for a saturated top)."""
    a = np.asarray(aline, np.float64)
    a = a - np.median(a)
    s = np.convolve(a, _SMOOTH, mode="same")
    cand = np.nonzero((s[1:-1] >= s[:-2]) & (s[1:-1] > s[2:]) & (s[1:-1] > PROMINENCE))[0] + 1
    kept: list[int] = []
    for k in cand[np.argsort(-s[cand])]:  # the strongest of maxima closer than a quarter of the separation
        if all(abs(k - j) > 20 for j in kept):
            kept.append(int(k))
    centres = []
    for k in kept:
        lo, hi = max(k - 14, 0), min(k + 15, len(a))
        w = np.clip(a[lo:hi] - 0.5 * a[lo:hi].max(), 0, None)
        centres.append(float((np.arange(lo, hi) * w).sum() / max(w.sum(), 1e-9)))
    return np.sort(tip_distance(centres, task))


class SurfaceTracker:
    """Tick by tick (`update(window)`, one call per control period `dt`): the tip-to-target-surface distance (mm,
    negative below it) or None while no surface is in view."""

    def __init__(self, task, dt: float = 0.1):
        self.task = task
        # the force side: the policy's contact-memory detector, told the simulated sensor's free-air reading
        self.onset = ContactOnset(dt, free_air_n=FORCE_BASELINE)
        self.target: float | None = None

    def update(self, window) -> float | None:
        if window is None:
            return None
        rows = window.values[window.valid]
        if len(rows) == 0:
            return self.target  # nothing new: the last reading stands (None before contact)
        if self.onset.contact:  # followed through the window 5 rows (~8 ms) at a time: a step stays far below TRACK_MM
            for chunk in np.array_split(rows[:, 1:], max(1, len(rows) // 5)):
                self._follow(reflections(chunk.mean(0), self.task))
            return self.target
        dists = reflections(rows[-5:, 1:].mean(0), self.task)  # the last ~8 ms (the reflections move)
        ahead = dists[dists > -PASSED_MM]
        if self.onset.update(rows[:, 0]):
            passed = dists[dists <= AHEAD_MM]
            self.target = float(passed[-1]) if len(passed) else -ONSET_MM
            return self.target
        return float(ahead[0]) if len(ahead) else None

    def _follow(self, dists: np.ndarray) -> None:
        """The tracked reflection's new distance: the reflection nearest the last one, if near enough (else it is
        kept: a reflection missing for a moment)."""
        if len(dists) and np.abs(dists - self.target).min() < TRACK_MM:
            self.target = float(dists[np.abs(dists - self.target).argmin()])
