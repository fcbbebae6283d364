"""The sensor task's tissue and sensor model section (`synthetic.task.sensor_model`) and its presets: the one place
that says what the synthetic tissue and sensor may look like (vla_lib/data/tissue.py draws and renders them).

Nothing here imports the rest of the package (the config imports it)."""
from __future__ import annotations

from dataclasses import dataclass, fields

from vla_lib.errors import ConfigError, refuse_nonfinite

# `nominal`: one interface (the target surface), fixed gain, no speckle, attenuation, saturation, force bias, drift
# or puncture; `rich`: all of them on. Ranges are U(lo, hi) per episode; reflectivities are relative to the nominal
# reflection (800 counts).
SENSOR_MODEL_PRESETS: dict[str, dict] = {
    "nominal": {"interfaces": [1, 1], "film_prob": 0.5, "film_height_mm": [0.5, 1.5], "layer_depth_mm": [0.5, 3.0],
                "target_reflectivity": [1.0, 1.0], "reflectivity": [0.3, 3.0], "speckle": 0.0,
                "attenuation_per_mm": 0.0, "gain": [1.0, 1.0], "offset": [0.0, 0.0], "saturation": 0.0,
                "aline_noise": 5.0, "force_bias_n": [0.0, 0.0], "force_drift_n_s": [0.0, 0.0],
                "force_noise_n": 0.01, "puncture_prob": 0.0, "puncture_depth_mm": [0.3, 0.9], "puncture_drop": 0.4},
}
SENSOR_MODEL_PRESETS["rich"] = {
    **SENSOR_MODEL_PRESETS["nominal"], "interfaces": [1, 4], "film_prob": 0.4, "target_reflectivity": [0.5, 1.5],
    "speckle": 0.3, "attenuation_per_mm": 0.3, "gain": [0.7, 1.4], "offset": [0.0, 60.0], "saturation": 2047.0,
    "force_bias_n": [-0.4, 0.4], "force_drift_n_s": [-0.02, 0.02], "force_noise_n": 0.015, "puncture_prob": 0.5}


@dataclass
class SensorModelConfig:
    """The tissue and sensor model of the sensor task (`synthetic.task.sensor_model`). Every field left null takes
    its value from `preset` (SENSOR_MODEL_PRESETS); a field given wins over the preset.

    Per episode: `interfaces` [lo, hi] reflecting interfaces in all, one of them the target surface (where the
    contact force begins); each other one is a film above it (probability `film_prob`, `film_height_mm` above: it
    reflects but gives no force) or a deeper layer (`layer_depth_mm` below). Reflectivities: `target_reflectivity`
    for the target, `reflectivity` for the others. The A-line: multiplicative `speckle` (contrast) on the
    reflections, two-way `attenuation_per_mm` through the tissue, a per-session `gain` and `offset`, additive noise
    `aline_noise` (std, counts), clipped at `saturation` (0 = never). The force: a per-session bias `force_bias_n`,
    a linear drift `force_drift_n_s`, noise `force_noise_n` (std); with probability `puncture_prob` the target is a
    membrane that gives at `puncture_depth_mm`, its force dropping to `puncture_drop` x the force at the puncture."""

    preset: str = "nominal"
    interfaces: list[int] | None = None
    film_prob: float | None = None
    film_height_mm: list[float] | None = None
    layer_depth_mm: list[float] | None = None
    target_reflectivity: list[float] | None = None
    reflectivity: list[float] | None = None
    speckle: float | None = None
    attenuation_per_mm: float | None = None
    gain: list[float] | None = None
    offset: list[float] | None = None
    saturation: float | None = None
    aline_noise: float | None = None
    force_bias_n: list[float] | None = None
    force_drift_n_s: list[float] | None = None
    force_noise_n: float | None = None
    puncture_prob: float | None = None
    puncture_depth_mm: list[float] | None = None
    puncture_drop: float | None = None

    def __post_init__(self) -> None:
        self.validate()

    def params(self) -> dict:
        """Every parameter's value: the preset's, where the field is null."""
        given = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "preset"}
        return {**SENSOR_MODEL_PRESETS[self.preset], **{k: v for k, v in given.items() if v is not None}}

    def validate(self) -> None:
        if self.preset not in SENSOR_MODEL_PRESETS:
            raise ConfigError(f"synthetic.task.sensor_model.preset must be one of {list(SENSOR_MODEL_PRESETS)}, "
                              f"got {self.preset!r}")
        refuse_nonfinite(self, "synthetic.task.sensor_model")
        p = self.params()
        lo, hi = p["interfaces"]
        if not 1 <= lo <= hi <= 4:
            raise ConfigError(f"synthetic.task.sensor_model.interfaces must be [lo, hi] with 1 <= lo <= hi <= 4, "
                              f"got {p['interfaces']}")
        ranges = [k for k, v in p.items() if isinstance(v, list) and (len(v) != 2 or v[0] > v[1])]
        if ranges:
            raise ConfigError(f"synthetic.task.sensor_model: {', '.join(ranges)} must be [lo, hi] with lo <= hi")
        if min(p["film_height_mm"][0], p["layer_depth_mm"][0]) <= 0 or min(p["gain"][0], p["aline_noise"]) <= 0:
            raise ConfigError("synthetic.task.sensor_model: film_height_mm, layer_depth_mm and gain must be > 0, "
                              "aline_noise > 0")
