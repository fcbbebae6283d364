"""The sensor-dependent insertion scenario (`synthetic.scenario: sensor_task`): what only the sensor can tell.

Per episode (all drawn from the episode's seed):
- the tissue surface height: nominal ± `surface_range_mm` (4 mm by default). At the demo resolution the cameras
  see about 1 px per mm after the VLM's resize, so they cannot place the surface to better than ~2 mm;
- the tissue stiffness (N/mm): the contact force is `stiffness × depth` above the free-air baseline (-3 N);
- which of the four pad targets is used (the cameras show it; the needle starts above it);
- the tissue and the sensor session (vla_lib/data/tissue.py, `task.sensor_model`): by default one interface, the
  sensor described below; the `rich` preset adds films above the target surface, deeper layers, speckle,
  attenuation, gain, offset, saturation, force bias and drift, and punctures. The target surface (`surface_z`,
  `stiffness`) is always the interface where the contact force begins.

The OCT fibre face sits `oct_standoff_mm` behind the needle tip: the A-line's surface-reflection peak tracks the
fibre-to-surface distance within its 0–6 mm range, i.e. tip-to-surface distances from +3.5 mm (surface coming into
view) to -2.5 mm (2.5 mm deep); outside that range there is no peak. So the sensor measures both the approach and
the depth below the surface; the force says "in contact" but not how deep (the stiffness varies).

The demonstrator (`ReactiveDemonstrator`) is a controller on the sensor alone: fast descent while the OCT shows
nothing, slowing down as the surface approaches, inserting at `v_insert` with a proportional stop at
`target_depth_mm` below the surface (backing off at up to `v_retract` if past it), then holding. The recorded
demonstrations vary per episode (gain from `demo_gain_range`, command noise `demo_noise_mm_s`), so the data also
shows states off the nominal path and the way back (without it, policies that stopped a little late drifted on).
The recorder (vla_lib/sim/demonstrations.py) runs it on the simulated rig (vla_lib/sim/rig.py), the same rig the
closed-loop evaluation drives, and writes the rig's streams in the recorder formats. This module is the scenario's
model only and imports nothing from vla_lib.sim (the data layer sits below the simulation).
`ScriptedBaseline` does the same moves but ignores the sensor: it assumes the nominal surface height.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vla_lib.data.surface_tracking import SurfaceTracker
from vla_lib.data.synthetic import TARGETS_XY
from vla_lib.data.tissue import (FORCE_BASELINE, Tissue, sample_tissue, tip_distance, tissue_force,
                                 tissue_sensor)

PEAK_THRESHOLD = 300.0  # an A-line maximum above this is a surface reflection (peak 800, background <= 40 + noise)
START_ANGLES = [90.0, 0.0, 175.0]
PREROLL_S = 0.2  # the rig streams this long with the arm at rest before the controller starts


@dataclass
class Episode:
    """The hidden truth of one sensor-task episode."""

    seed: int
    target_index: int
    surface_z: float
    stiffness: float
    start: list[float]  # x, y, z, a, b, r
    camera_clock_offset: float
    sensor_clock_offset: float
    tissue: Tissue = field(default_factory=Tissue)  # surface_z / stiffness are its target surface's

    def __post_init__(self) -> None:
        if isinstance(self.tissue, dict):  # read back from the truth json
            self.tissue = Tissue(**self.tissue)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


def sample_episode(task, seed: int) -> Episode:
    rng = np.random.default_rng([7, seed])
    target = int(rng.integers(len(TARGETS_XY)))
    tx, ty = TARGETS_XY[target]
    lo, hi = task.surface_offset_mm or (-task.surface_range_mm, task.surface_range_mm)
    surface = task.surface_z_nominal + rng.uniform(lo, hi)
    lo, hi = task.stiffness_range
    start = [tx + rng.uniform(-0.5, 0.5), ty + rng.uniform(-0.5, 0.5),
             task.surface_z_nominal + task.start_height_mm + rng.uniform(-0.3, 0.3), *START_ANGLES]
    return Episode(seed, target, float(surface), float(rng.uniform(lo, hi)), [float(v) for v in start],
                   float(rng.uniform(-0.02, 0.02)), float(rng.uniform(-0.015, 0.015)),
                   sample_tissue(task.sensor_model, seed))


# ---------------------------------------------------------------------------------------------------------------
# The sensor model (what the rig streams) and its inverse (what the demonstrator reads)
# ---------------------------------------------------------------------------------------------------------------
def contact_force(ep: Episode, tip_z) -> np.ndarray:
    """Noise-free contact force (N above the baseline) at tip heights `tip_z`."""
    return tissue_force(ep.tissue, ep.stiffness, ep.surface_z - np.asarray(tip_z, np.float64))


def sensor_values(ep: Episode, task, tip_z: np.ndarray, rng: np.random.Generator,
                  t=None) -> tuple[np.ndarray, np.ndarray]:
    """(forces (N,), A-lines (N, 1025)) float32 for sensor samples taken at tip heights `tip_z` (at times `t`, for
    the force drift) from the episode's tissue (vla_lib/data/tissue.py)."""
    return tissue_sensor(ep.tissue, task, ep.surface_z, ep.stiffness, tip_z, rng, t)


def read_sensor(window, task) -> tuple[float | None, float | None]:
    """(tip-to-surface distance in mm or None when the OCT shows no surface, contact force in N or None) from a
    SensorWindow (or None: no sensor), for the nominal sensor: its brightest reflection and the force above the
    nominal free-air reading (the demonstrator reads several interfaces: vla_lib/data/surface_tracking.py)."""
    if window is None:
        return None, None
    rows = window.values[window.valid]
    if len(rows) == 0:
        return None, None
    recent = rows[-5:]  # the last ~8 ms: the peak moves up to 75 indices over a 100 ms window at full speed
    force = float(recent[:, 0].mean()) - FORCE_BASELINE
    distance = float(oct_distance(recent[:, 1:].mean(0, keepdims=True), task)[0])
    return (None if np.isnan(distance) else distance), force


def oct_distance(alines: np.ndarray, task) -> np.ndarray:
    """Tip-to-surface distance (mm, negative = below the surface) per A-line (N, 1025), NaN where the OCT shows no
    surface: the reflection peak's sub-sample centroid, mapped back through the sensor model."""
    alines = np.asarray(alines, np.float32)
    k = alines.argmax(1)
    rows = np.arange(len(alines))
    offsets = np.arange(-8, 9)
    cols = k[:, None] + offsets[None, :]  # centroid around the maximum
    inside = (cols >= 0) & (cols < alines.shape[1])
    w = np.where(inside, np.clip(alines[rows[:, None], np.clip(cols, 0, alines.shape[1] - 1)] - 100.0, 0, None), 0)
    centre = (cols * w).sum(1) / np.maximum(w.sum(1), 1e-6)
    out = tip_distance(centre, task)
    return np.where(alines[rows, k] < PEAK_THRESHOLD, np.nan, out)


def descent_speed(distance: float | None, task, gain: float | None = None) -> float:
    """The demonstrator's speed (mm/s, downwards; negative = backing off) at a tip-to-surface distance (None = surface
    not in view)."""
    if distance is None:
        return task.v_fast
    if distance > 0:
        frac = np.clip((distance - 0.5) / max(task.slow_zone_mm - 0.5, 1e-6), 0, 1)
        return float(task.v_slow + (task.v_fast - task.v_slow) * frac)
    remaining = task.target_depth_mm + distance  # depth still to go (negative: past the target)
    return float(np.clip((gain or task.insert_gain) * remaining, -task.v_retract, task.v_insert))


def chunk_from_speed(speed: float, horizon: int, dt: float, gripper: float = 1.0) -> np.ndarray:
    """(H, 7): the same downward step `speed x dt` for every step of the chunk (the rig executes the first)."""
    out = np.zeros((horizon, 7), np.float32)
    out[:, 2] = -speed * dt
    out[:, 6] = gripper
    return out


class ReactiveDemonstrator:
    """Descend until the OCT shows the surface, slow down, insert to the target depth measured by the OCT (backing off
    if past it), hold. Uses the sensor window only: the target surface is the reflection where the contact force
    begins, tracked from then on (vla_lib/data/surface_tracking.py); films above it and deeper layers are passed
    over. One instance per episode (it keeps that state). `gain` / `noise_mm_s` / `rng`: the recorder's
    per-episode variation (default: the nominal controller, no noise)."""

    name = "demonstrator"

    def __init__(self, task, horizon: int = 8, dt: float = 0.1, gain: float | None = None, noise_mm_s: float = 0.0,
                 rng: np.random.Generator | None = None):
        self.task, self.horizon, self.dt = task, horizon, dt
        self.gain, self.noise, self.rng = gain, noise_mm_s, rng
        self.tracker = SurfaceTracker(task, dt)

    def __call__(self, io) -> np.ndarray:
        distance = self.tracker.update(io.sensor_window())
        speed = descent_speed(distance, self.task, self.gain)
        if self.noise and self.rng is not None:
            speed += float(self.rng.normal(0, self.noise))
        return chunk_from_speed(speed, self.horizon, self.dt)


class ScriptedBaseline:
    """The same moves, blind to the sensor: the tissue is assumed at its nominal height, the depth taken from the
    arm's own pose (what a fixed script with a calibrated robot does)."""

    name = "scripted"

    def __init__(self, task, horizon: int = 8, dt: float = 0.1):
        self.task, self.horizon, self.dt = task, horizon, dt

    def __call__(self, io) -> np.ndarray:
        distance = float(io.robot_pose()[2]) - self.task.surface_z_nominal
        assumed = None if distance > self.task.oct_range_mm - self.task.oct_standoff_mm else distance
        return chunk_from_speed(descent_speed(assumed, self.task), self.horizon, self.dt)


# ---------------------------------------------------------------------------------------------------------------
# Sessions of the scenario: their groups and truth (vla_lib/sim/demonstrations.py records and writes them)
# ---------------------------------------------------------------------------------------------------------------
GROUP_SENSOR = "Sensor_task_phantom"
GROUP_VISION_ONLY = "Sensor_task_vision_only"


def load_episode(session: Path) -> Episode:
    return Episode(**json.loads((Path(session) / "sensor_task_truth.json").read_text()))


def sensor_task_groups() -> list[dict]:
    """The data.groups of a sensor-task run (what params/demo.yaml lists)."""
    instruction = "Insert the needle 1.5 mm below the tissue surface and hold"
    return [{"name": GROUP_SENSOR, "glob": f"{GROUP_SENSOR}/recv_all_*", "instruction": instruction, "weight": 1.0},
            {"name": GROUP_VISION_ONLY, "glob": f"{GROUP_VISION_ONLY}/Captures*", "instruction": instruction,
             "weight": 1.0}]


PHASES = ("descent", "approach", "insert", "hold")


def phase_of(ep: Episode, task, tip_z: np.ndarray, settled: np.ndarray) -> np.ndarray:
    """Phase labels of sensor-task samples from the truth: `descent` (the OCT cannot see the surface yet),
    `approach` (it can, the tip is above), `insert` (in the tissue, still moving), `hold` (`settled`: at rest)."""
    d = np.asarray(tip_z, np.float64) - ep.surface_z
    out = np.where(d > task.oct_range_mm - task.oct_standoff_mm, "descent", np.where(d > 0, "approach", "insert"))
    return np.where(np.asarray(settled, bool) & (d <= 0), "hold", out).astype(object)


def sample_phases(index, task) -> np.ndarray:
    """One phase per row of a SampleIndex of sensor-task sessions (None where a session has no sensor-task truth),
    for per-phase reports of the offline evaluation."""
    out = np.full(len(index), None, dtype=object)
    sids, t = index.table["session_id"].to_numpy(), index.table["t"].to_numpy(np.float64)
    for sid in np.unique(sids):
        s = index.sessions[sid]
        if not (Path(s.path) / "sensor_task_truth.json").exists():
            continue
        rows = np.nonzero(sids == sid)[0]
        z = np.interp(t[rows], s.robot_times, s.pose[:, 2])
        ahead = np.interp(t[rows] + 0.5, s.robot_times, s.pose[:, 2])  # within 0.05 mm half a second later
        out[rows] = phase_of(load_episode(s.path), task, z, np.abs(ahead - z) < 0.05)
    return out
