"""The synthetic tissue and the OCT/force sensor looking at it: what the simulated rig streams.

A `Tissue` is drawn per episode from the episode's seed (`sample_tissue`, parameters in `synthetic.task.sensor_model`,
vla_lib/data/configuration_tissue.py). Its interfaces are given by their heights above the target surface (mm; the
target's is 0, deeper layers are negative): the target surface is where the contact force begins; a film above it
reflects but gives no force, a deeper layer reflects what the attenuation leaves of it. The session's A-line gain,
offset and saturation, its force bias and drift, and the puncture of the target membrane are part of the draw, so
the truth json holds everything `sensor_values` needs.

The A-line: each interface in the OCT's view (fibre-to-interface distance in [0, oct_range_mm]) adds a Gaussian
reflection (sigma 6 samples) of height 800 x reflectivity x speckle x exp(-2 attenuation x tissue path) at index
60 + 150 x distance, on a smooth background with N(0, aline_noise) noise; then x gain + offset, clipped at the
saturation. The force: the free-air baseline (-3 N) + bias + drift x t + the contact force + N(0, force_noise_n).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vla_lib.dims import ALINE_POINTS

FORCE_BASELINE = -3.0
ALINE_PEAK0, ALINE_PER_MM = 60.0, 150.0  # peak index = 60 + 150 x fibre-to-interface distance (mm)
REFLECTION = 800.0  # height of a reflectivity-1 reflection (counts)
NOISE_STD = 5.0  # the noise bank's std (counts)
MIN_SEPARATION_MM = 0.35  # interfaces closer than this are not drawn: their reflections would merge


def aline_index(fibre_distance_mm):
    """The A-line sample index of a reflection `fibre_distance_mm` from the fibre face (the sensor model)."""
    return ALINE_PEAK0 + ALINE_PER_MM * np.asarray(fibre_distance_mm, np.float64)


def tip_distance(index, task):
    """The inverse: tip-to-interface distance (mm, negative = below it) of a reflection at A-line `index` (the fibre
    face sits `task.oct_standoff_mm` behind the tip)."""
    return (np.asarray(index, np.float64) - ALINE_PEAK0) / ALINE_PER_MM - task.oct_standoff_mm


_BACKGROUND = (40.0 * np.exp(-np.arange(ALINE_POINTS) / 300.0)).astype(np.float32)
_NOISE_ROWS = 4096
_BANKS: dict = {}
_HALF = np.arange(-36, 37)  # a reflection is drawn only where it is not negligible: +-6 sigma


@dataclass
class Tissue:
    """One episode's tissue and sensor session (the default: one interface, today's nominal sensor)."""

    heights_mm: list[float] = field(default_factory=lambda: [0.0])  # above the target surface, top first
    reflectivity: list[float] = field(default_factory=lambda: [1.0])
    puncture_depth_mm: float | None = None  # the target membrane gives at this depth (None: no puncture)
    puncture_drop: float = 0.4  # ... its force falling to this x the force at the puncture
    gain: float = 1.0
    offset: float = 0.0
    speckle: float = 0.0
    attenuation_per_mm: float = 0.0
    saturation: float = 0.0  # 0 = never clipped
    aline_noise: float = NOISE_STD
    force_bias_n: float = 0.0
    force_drift_n_s: float = 0.0
    force_noise_n: float = 0.01

    @property
    def target_index(self) -> int:
        """Which interface is the target surface (the one where the contact force begins)."""
        return self.heights_mm.index(0.0)


def _uniform(rng: np.random.Generator, lo_hi) -> float:
    lo, hi = lo_hi
    return float(lo) if lo == hi else float(rng.uniform(lo, hi))


def _interfaces(p: dict, rng: np.random.Generator) -> tuple[list[float], list[float]]:
    """Heights (top first) and reflectivities; an extra interface too close to another one is not drawn."""
    heights, refl = [0.0], [_uniform(rng, p["target_reflectivity"])]
    for _ in range(int(rng.integers(p["interfaces"][0], p["interfaces"][1] + 1)) - 1):
        h = _uniform(rng, p["film_height_mm"]) if rng.random() < p["film_prob"] else -_uniform(rng, p["layer_depth_mm"])
        r = _uniform(rng, p["reflectivity"])
        if min(abs(h - x) for x in heights) >= MIN_SEPARATION_MM:
            heights.append(h)
            refl.append(r)
    order = np.argsort(heights)[::-1]
    return [heights[i] for i in order], [refl[i] for i in order]


def sample_tissue(model_cfg, seed: int) -> Tissue:
    """The episode's tissue, from its own stream of the episode seed (the other draws of the episode are unchanged)."""
    p = model_cfg.params()
    rng = np.random.default_rng([29, seed])
    heights, refl = _interfaces(p, rng)
    puncture = _uniform(rng, p["puncture_depth_mm"]) if rng.random() < p["puncture_prob"] else None
    return Tissue(heights, refl, puncture, float(p["puncture_drop"]), _uniform(rng, p["gain"]),
                  _uniform(rng, p["offset"]), float(p["speckle"]), float(p["attenuation_per_mm"]),
                  float(p["saturation"]), float(p["aline_noise"]), _uniform(rng, p["force_bias_n"]),
                  _uniform(rng, p["force_drift_n_s"]), float(p["force_noise_n"]))


def tissue_force(tissue: Tissue, stiffness: float, depth) -> np.ndarray:
    """Noise-free contact force (N above the baseline) at tip depths below the target surface: `stiffness x depth`;
    a puncture membrane's force falls at its puncture depth, then builds again (a function of depth alone: backing
    off retraces it)."""
    depth = np.clip(np.asarray(depth, np.float64), 0, None)
    force = stiffness * depth
    if tissue.puncture_depth_mm is not None:
        dp = tissue.puncture_depth_mm
        force = np.where(depth < dp, force, stiffness * (tissue.puncture_drop * dp + depth - dp))
    return force


def _bank(name: str, seed: int, width: int, std: float = 1.0) -> np.ndarray:
    """Fixed banks of normal rows (drawing rows from them is fast)."""
    if name not in _BANKS:
        _BANKS[name] = std * np.random.default_rng(seed).standard_normal((_NOISE_ROWS, width), dtype=np.float32)
    return _BANKS[name]


def noise_rows(rng: np.random.Generator, n: int, std: float) -> np.ndarray:
    """(n, 1025) float32 N(0, std) rows."""
    rows = _bank("noise", 2024, ALINE_POINTS, NOISE_STD)[rng.integers(0, _NOISE_ROWS, n)]
    return rows if std == NOISE_STD else rows * np.float32(std / NOISE_STD)


def add_reflection(alines, fibre, amplitude, task, tissue: Tissue, rng) -> None:
    """Add one interface's reflection to `alines` (N, 1025) in place: `fibre` (N,) fibre-to-interface distances,
    `amplitude` (N,) its height before speckle."""
    rows = np.nonzero((fibre >= 0) & (fibre <= task.oct_range_mm))[0]
    if not len(rows):
        return
    peak = aline_index(np.clip(fibre[rows], 0, task.oct_range_mm))
    cols = np.round(peak).astype(np.int64)[:, None] + _HALF[None, :]
    ok = (cols >= 0) & (cols < ALINE_POINTS)
    bump = (amplitude[rows, None] * np.exp(-0.5 * ((cols - peak[:, None]) / 6.0) ** 2)).astype(np.float32)
    if tissue.speckle:  # fully developed speckle would hide the interface: a contrast below 1 on each sample
        grain = _bank("speckle", 2025, len(_HALF))[rng.integers(0, _NOISE_ROWS, len(rows))]
        bump *= np.clip(1.0 + tissue.speckle * grain, 0, None)
    r = np.broadcast_to(rows[:, None], cols.shape)
    alines[r[ok], cols[ok]] += bump[ok]


def tissue_sensor(tissue: Tissue, task, surface_z: float, stiffness: float, tip_z, rng: np.random.Generator,
                  t=None) -> tuple[np.ndarray, np.ndarray]:
    """(forces (N,), A-lines (N, 1025)) float32 for sensor samples taken at tip heights `tip_z` (times `t`, for the
    force drift)."""
    tip_z = np.asarray(tip_z, np.float64)
    bias = tissue.force_bias_n + tissue.force_drift_n_s * (0.0 if t is None else np.asarray(t, np.float64))
    force = FORCE_BASELINE + bias + tissue_force(tissue, stiffness, surface_z - tip_z) \
        + rng.normal(0, tissue.force_noise_n, len(tip_z))
    alines = noise_rows(rng, len(tip_z), tissue.aline_noise)
    alines += _BACKGROUND
    fibre_z = tip_z + task.oct_standoff_mm
    for h, refl in zip(tissue.heights_mm, tissue.reflectivity):
        z = surface_z + h
        amplitude = np.full(len(tip_z), REFLECTION * refl)
        if tissue.attenuation_per_mm:  # two-way, through the tissue between the fibre and the interface
            path = np.clip(np.minimum(fibre_z, surface_z) - z, 0, None)
            amplitude *= np.exp(-2.0 * tissue.attenuation_per_mm * path)
        add_reflection(alines, tip_z - z + task.oct_standoff_mm, amplitude, task, tissue, rng)
    if tissue.gain != 1.0 or tissue.offset != 0.0:
        alines = alines * np.float32(tissue.gain) + np.float32(tissue.offset)
    if tissue.saturation:
        np.clip(alines, 0.0, tissue.saturation, out=alines)
    return force.astype(np.float32), alines
