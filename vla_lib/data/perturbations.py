"""Perturbation families for robustness tests of the sensor task: the one place to add one.

`PERTURBATIONS[family][level]` is a dict of dotted overrides on a RunConfig (`synthetic.task.*`, its
`sensor_model.*`, `runtime.*`), applied by `apply_perturbation` on top of whatever the config already says (the
nominal or the rich sensor model). Levels go from mild to severe; "outside the training range" means outside what
the recorder draws by default (surface offset +-4 mm, stiffness 0.3-0.7 N/mm). A new family is a new entry here.
"""
from __future__ import annotations

TASK = "synthetic.task."
MODEL = "synthetic.task.sensor_model."

PERTURBATIONS: dict[str, dict[str, dict]] = {
    "noise": {  # A-line noise std (counts; nominal 5) and force noise std (N; nominal 0.01)
        "x2": {MODEL + "aline_noise": 10.0, MODEL + "force_noise_n": 0.02},
        "x4": {MODEL + "aline_noise": 20.0, MODEL + "force_noise_n": 0.04},
        "x8": {MODEL + "aline_noise": 40.0, MODEL + "force_noise_n": 0.08},
    },
    "reflection": {  # the target surface's reflectivity (nominal 1; rich 0.5-1.5)
        "weak": {MODEL + "target_reflectivity": [0.3, 0.4]},
        "faint": {MODEL + "target_reflectivity": [0.15, 0.2]},
        "strong": {MODEL + "target_reflectivity": [2.5, 3.0]},
    },
    "extra_interfaces": {  # one more reflecting interface at the depth the level names (relative to the target)
        "film_close": {MODEL + "interfaces": [2, 2], MODEL + "film_prob": 1.0, MODEL + "film_height_mm": [0.5, 0.8]},
        "film_far": {MODEL + "interfaces": [2, 2], MODEL + "film_prob": 1.0, MODEL + "film_height_mm": [1.2, 1.5]},
        "layer_shallow": {MODEL + "interfaces": [2, 2], MODEL + "film_prob": 0.0, MODEL + "layer_depth_mm": [0.5, 1.0]},
        "layer_deep": {MODEL + "interfaces": [2, 2], MODEL + "film_prob": 0.0, MODEL + "layer_depth_mm": [2.0, 3.0]},
        "four": {MODEL + "interfaces": [4, 4]},
    },
    "packet_loss": {  # sensor packets dropped at random, and bursts of 10-25 ms lost (nominal 2 %, 3 per 10 s)
        "10%": {TASK + "sensor_drop_fraction": 0.1, TASK + "sensor_bursts_per_10s": 10.0},
        "30%": {TASK + "sensor_drop_fraction": 0.3, TASK + "sensor_bursts_per_10s": 20.0},
        "60%": {TASK + "sensor_drop_fraction": 0.6, TASK + "sensor_bursts_per_10s": 40.0},
    },
    "arm_latency": {  # from a command to the arm starting to move (nominal 30 ms; the runtime still assumes its own)
        "60ms": {TASK + "action_latency_s": 0.06},
        "120ms": {TASK + "action_latency_s": 0.12},
        "250ms": {TASK + "action_latency_s": 0.25},
    },
    "arm_lag": {  # the arm's first-order lag behind its set point (nominal 50 ms)
        "150ms": {TASK + "tracking_tau_s": 0.15},
        "300ms": {TASK + "tracking_tau_s": 0.3},
    },
    "surface_height": {  # surface offset from nominal outside the training range +-4 mm
        "high": {TASK + "surface_offset_mm": [4.5, 5.5]},
        "low": {TASK + "surface_offset_mm": [-5.5, -4.5]},
        "very_low": {TASK + "surface_offset_mm": [-7.0, -6.0]},
    },
    "stiffness": {  # N/mm, outside the training range 0.3-0.7 (above ~1 N/mm the target depth exceeds the force limit)
        "soft": {TASK + "stiffness_range": [0.15, 0.25]},
        "stiff": {TASK + "stiffness_range": [0.75, 0.95]},
        "very_stiff": {TASK + "stiffness_range": [1.2, 1.5]},
    },
}


def perturbation_levels() -> list[tuple[str, str]]:
    """Every (family, level), in the order above."""
    return [(family, level) for family, levels in PERTURBATIONS.items() for level in levels]


def perturbation_overrides(family: str, level: str) -> dict:
    """The dotted overrides of one family's level (KeyError naming what exists when either is unknown)."""
    if family not in PERTURBATIONS:
        raise KeyError(f"unknown perturbation family {family!r} (known: {list(PERTURBATIONS)})")
    if level not in PERTURBATIONS[family]:
        raise KeyError(f"unknown level {level!r} of {family!r} (known: {list(PERTURBATIONS[family])})")
    return dict(PERTURBATIONS[family][level])


def apply_perturbation(cfg, family: str, level: str):
    """A new RunConfig: `cfg` with one family's level applied (the config's own checks run on the result)."""
    return cfg.with_overrides(perturbation_overrides(family, level))
