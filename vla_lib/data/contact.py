"""Contact memory: where the needle met the target surface, kept for the rest of the episode.

A window of 100 ms cannot tell a film above the target from a layer below it (both show two reflections behind the
tip at the same distances); what tells them apart is where the contact force began, which the demonstrator keeps as
state. `ContactMemory` gives the policy the same memory as an input: [in contact (0/1), the tip's displacement since
the contact onset (x, y, z mm, robot frame)], all zero before contact. It is computed by this one class, tick by
tick, from the sensor window and the robot pose: over a session's anchors for training (`contact_track`) and in the
runtime's tick for the closed loop, the replay and the live rig, so training and the robot see the same value.

Contact is the force rising `CONTACT_N` above a baseline that follows the force's slow drift in free air, never
faster than a sensor drifts (`MAX_DRIFT_N_S`): a contact that builds slowly (a slow push at the surface) is found,
where an unbounded follower took it for drift and never saw it. A pause in contact below the threshold still enters
the baseline at that rate, so the onset is found late by up to MAX_DRIFT_N_S x the pause / the stiffness. The
baseline starts from the first reading: the memory assumes no free-air value of its own, so a real sensor's offset
cannot fake a contact; a run that starts in tissue is the runtime guard's to refuse (its tare check). Without a sensor
there is never contact: the memory is part of what the sensor gives, and the sensor ablation removes it too.
"""
from __future__ import annotations

import numpy as np

from vla_lib.data.timeline import SensorWindow, resample_sensor_window
from vla_lib.dims import CONTACT_DIMS

CONTACT_N = 0.04  # force above the free-air baseline that means contact
MAX_BIAS_N = 0.5  # with a known free-air reading: a first force further from it than this is contact already
BASELINE_TAU_S = 1.0  # the free-air baseline follows the force with this time constant (drift <= 0.02 N/s lags 0.02 N)
MAX_DRIFT_N_S = 0.02  # ... and never faster than this: a force sensor's drift (the rich sensor model's largest)
FORCE_ROWS = 20  # the force is read as the mean of the window's last ~30 ms (20 points at 650 Hz)
RETRACT_MM = 2.0  # a tip this far from the onset with the force back at its free-air baseline has left the tissue


class ContactOnset:
    """Contact from the force alone, one call per control period `dt`; latched once seen. `free_air_n`: the sensor's
    known free-air reading (the simulated sensor's), which makes a first force far from it contact at once; None: the
    first reading is free air."""

    def __init__(self, dt: float, free_air_n: float | None = None):
        self.alpha, self.max_step = min(1.0, dt / BASELINE_TAU_S), MAX_DRIFT_N_S * dt
        self.free_air_n = free_air_n
        self.baseline: float | None = None
        self.contact = False

    @staticmethod
    def force(forces: np.ndarray) -> float:
        return float(np.mean(forces[-FORCE_ROWS:]))

    def update(self, forces: np.ndarray) -> bool:
        """`forces`: the window's valid force samples, oldest first (none: nothing new). True from contact on."""
        if self.contact or len(forces) == 0:
            return self.contact
        if self.baseline is None:  # free air at the start, unless the force is off a known free-air reading
            self.baseline = float(np.mean(forces))
            if self.free_air_n is not None and abs(self.baseline - self.free_air_n) > MAX_BIAS_N:
                self.baseline = self.free_air_n  # in contact already (a restart in tissue)
        force = self.force(forces)
        if force - self.baseline > CONTACT_N:
            self.contact = True
        else:
            self.baseline += float(np.clip(self.alpha * (force - self.baseline), -self.max_step, self.max_step))
        return self.contact


class ContactMemory:
    """The policy's contact input, tick by tick: `update(window, pose)` -> (CONTACT_DIMS,) float32."""

    def __init__(self, dt: float):
        self.onset = ContactOnset(dt)
        self.origin: np.ndarray | None = None  # the tip position (mm) at the first tick in contact

    def update(self, window, pose) -> np.ndarray:
        """`window` a SensorWindow or None (no sensor); `pose` the robot's latest pose (6,), mm / deg."""
        forces = np.empty(0) if window is None else np.asarray(window.values)[np.asarray(window.valid), 0]
        position = np.full(3, np.nan) if pose is None else np.asarray(pose, np.float64)[:3]  # no pose: not finite
        if self.origin is not None and len(forces) and self._left_tissue(forces, position):
            self.onset.contact, self.origin = False, None  # a new insertion: its own onset (the baseline stays)
        if self.onset.update(forces) and self.origin is None and np.isfinite(position).all():
            self.origin = position.copy()
        out = np.zeros(CONTACT_DIMS, np.float32)
        if self.origin is not None:
            out[0], out[1:] = 1.0, position - self.origin
        return out

    def _left_tissue(self, forces: np.ndarray, position: np.ndarray) -> bool:
        """Withdrawn: the tip RETRACT_MM from the onset and the force back at its free-air baseline (inside tissue
        the force is far above it: 0.3 N/mm x 2 mm). A later contact is a new insertion, e.g. after a stop and
        release, or a replayed recording that starts again."""
        away = float(np.linalg.norm(position - self.origin)) > RETRACT_MM
        return away and self.onset.force(forces) - self.onset.baseline < CONTACT_N


def contact_track(sensor_times: np.ndarray, forces: np.ndarray, robot_times: np.ndarray, pose: np.ndarray,
                  anchors: np.ndarray, data_cfg) -> np.ndarray:
    """(N, CONTACT_DIMS) the contact memory at each anchor of a session, the anchors taken as the control ticks:
    the window the runtime would see at t and the latest robot pose stamped at or before t. Only the force column is
    resampled (the A-lines are not read): a row whose A-line alone is not finite counts here and not in the runtime's
    window; the recorders lose packets as whole rows."""
    no_aline = np.empty((len(sensor_times), 0), np.float32)
    memory = ContactMemory(data_cfg.anchor_stride_s)
    last = np.clip(np.searchsorted(robot_times, anchors, side="right") - 1, 0, len(robot_times) - 1)
    out = np.zeros((len(anchors), CONTACT_DIMS), np.float32)
    for i, t in enumerate(anchors):
        values, valid, _ = resample_sensor_window(sensor_times, forces, no_aline, float(t), data_cfg.sensor_window_s,
                                                  data_cfg.sensor_window_size, data_cfg.sensor_max_gap_s)
        out[i] = memory.update(SensorWindow(values, valid), pose[last[i]])
    return out

